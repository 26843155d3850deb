"""A request stream flattened into per-chunk arrays: the form the offline curves take.

Requests are chains of chunk keys (a chunk is only useful when the chunks before it are
present too), so the arrays keep which request each reference belongs to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError


@dataclass(slots=True)
class References:
    """A request stream flattened into per-chunk arrays, the form the offline functions take."""

    keys: list[Any] | np.ndarray
    sizes: np.ndarray
    request_index: np.ndarray
    requests: int


def flatten_requests(requests: Iterable[Any]) -> References:
    """Flatten objects with `.keys` and `.sizes` (e.g. tierd.mrc.traces.TraceRequest) into arrays."""
    keys: list[Any] = []
    sizes: list[int] = []
    lengths: list[int] = []
    for req in requests:
        if len(req.sizes) != len(req.keys):
            raise InvalidArgumentError(f"request with {len(req.keys)} keys and {len(req.sizes)} sizes: pass one size per key")
        keys.extend(req.keys)
        sizes.extend(req.sizes)
        lengths.append(len(req.keys))
    flat: list[Any] | np.ndarray = keys
    if keys and all(type(k) is int for k in keys[:1000]):
        try:
            flat = np.asarray(keys, dtype=np.int64)
        except (OverflowError, TypeError, ValueError):
            flat = keys
    return References(
        keys=flat,
        sizes=np.asarray(sizes, dtype=np.int64),
        request_index=np.repeat(np.arange(len(lengths), dtype=np.int64), lengths),
        requests=len(lengths),
    )


def key_ids(keys: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Dense ids per reference (0 = first distinct key seen) and the distinct keys by id."""
    if isinstance(keys, np.ndarray) and np.issubdtype(keys.dtype, np.integer):
        distinct, ids = np.unique(keys, return_inverse=True)
        return ids.astype(np.int64, copy=False), distinct.tolist()
    index: dict[Hashable, int] = {}
    setdefault = index.setdefault
    try:
        ids = np.fromiter((setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, Hashable))
        raise InvalidArgumentError(f"key {bad!r}: keys must be bytes or integers") from None
    return ids, list(index)
