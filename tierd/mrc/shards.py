"""Sampled hit-rate curves (SHARDS, Waldspurger et al., FAST'15): online and offline.

`ShardsMRC` runs online, per reference: a Fenwick tree over logical access times
(`recency.RecencyTree`), O(log n) per sampled reference, plus SHARDS spatial sampling so only
a fraction of keys is tracked (`sampling`: a key is sampled iff its hash is below T, rate
R = T / P):

* Sampling by key keeps every reference of a sampled key, so its distances among sampled
  keys are about R times the true ones and are scaled by 1/R.
* fixed rate: T stays put; memory is about R * distinct keys.
* fixed size: at most `max_keys` keys are tracked; when one more arrives, the key with the
  largest hash is dropped and T lowered to its hash. Each sampled reference weighs 1/R(t)
  (the references it stands for at the rate of its time), which is the paper's histogram
  rescaling by R_new/R_old done once per sample instead of over the whole histogram.
* SHARDS-adj: the weight of the sampled references rarely equals the true reference count
  N; a handful of hot keys sampled or not moves it. The difference N - sum(1/R) is added to
  the first histogram bucket (the hot keys it comes from have tiny distances). On the
  Mooncake conversation trace at R = 0.01 it cuts the mean absolute error over 1k..60k
  blocks from 0.027 to 0.003; with very few samples (R = 0.001, ~280 sampled references
  there) it can overshoot, so keep a few thousand sampled keys.
* prefix variant: chunks are sampled per key (the same hash test) and a sampled chunk's
  prefix distance is the running maximum over the *sampled* chunks of its request so far.
  Sampling whole requests by their first key would not work: most requests share the same
  first chunk (system prompt), so that sample is all or nothing. Per-key sampling drops the
  unsampled predecessors from the maximum, which can only make the estimate optimistic; with
  chained keys it costs almost nothing, because the previous use of chunk i was in a request
  that also used chunks 0..i-1 just before it, so distances along a request hardly ever
  decrease (on the Mooncake trace the exact prefix curve equals the block curve, and the
  sampled prefix curve's error is the block curve's, 0.003 at R = 0.01). On keys that are not
  chained (an i.i.d. Zipf stress trace) the sampled prefix curve is just the block curve,
  optimistic by ~0.35: this estimator relies on tierd's chained keys.

`shards_fixed_rate_curves` is the offline twin of fixed-rate `ShardsMRC`: the same histogram
at numpy speed, from exact distances of the sampled subsequence.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError
from tierd.mrc.curve import Curve
from tierd.mrc.exact import COLD, running_max_by_request, stack_distances
from tierd.mrc.histogram import DistanceHistogram
from tierd.mrc.recency import RecencyTree
from tierd.mrc.references import References
from tierd.mrc.sampling import HASH_MODULUS, key_hashes, sampling_threshold, shards_mask

#: What a capacity counts: keys ("blocks", every key weighs 1) or bytes (weights are sizes).
UNITS = ("blocks", "bytes")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise InvalidArgumentError(f"unit {unit!r}: use 'blocks' or 'bytes'")


class ShardsMRC:
    """Online LRU hit-rate curve estimator (SHARDS), block-level and prefix-level.

    Call `access_request(keys, sizes)` once per request (a prefix chain of chunk keys) or
    `access(key, size)` for a lone reference; `curve(grid)` / `prefix_curve(grid)` at any time.
    Cost per reference: one xxh3 hash and, for the sampled fraction R, O(log n) Python work;
    nothing blocks, so it can run on the request path or drain a queue in the background.
    Not thread-safe: call it from one thread or one event loop.

    `unit="blocks"` measures capacity in keys (every key weighs 1); `unit="bytes"` in bytes
    (weights are the sizes). Rate 1.0 tracks every key: the exact Mattson algorithm online.
    """

    def __init__(self, rate: float = 0.01, *, max_keys: int | None = None, unit: str = "blocks", adjust: bool = True,
                 bucket_width: float | None = None, max_buckets: int = 1 << 15) -> None:
        _check_unit(unit)
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1):
            raise InvalidArgumentError(f"max_keys {max_keys!r}: use a positive integer, e.g. 8192")
        if bucket_width is not None and not (bucket_width > 0 and math.isfinite(bucket_width)):
            raise InvalidArgumentError(f"bucket_width {bucket_width!r}: use a positive number")
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 2:
            raise InvalidArgumentError(f"max_buckets {max_buckets!r}: use an integer >= 2")
        self._threshold = sampling_threshold(rate)
        self._max_keys = max_keys
        self._bytes = unit == "bytes"
        self._adjust = adjust
        self._tree = RecencyTree()
        self._heap: list[tuple[int, int, Hashable]] = []  # (-hash, seq, key) of tracked keys
        self._seq = 0
        width = bucket_width if bucket_width is not None else (0.0 if self._bytes else 1.0)
        self._blocks = DistanceHistogram(width=width, max_buckets=max_buckets)
        self._prefix = DistanceHistogram(width=width, max_buckets=max_buckets)
        self._references = 0
        self._sampled_references = 0

    @classmethod
    def fixed_rate(cls, rate: float, **kwargs: Any) -> ShardsMRC:
        """Sample keys at a constant rate; memory about rate * distinct keys."""
        return cls(rate, **kwargs)

    @classmethod
    def fixed_size(cls, max_keys: int, *, initial_rate: float = 1.0, **kwargs: Any) -> ShardsMRC:
        """Track at most `max_keys` keys, lowering the rate as more distinct keys show up."""
        return cls(initial_rate, max_keys=max_keys, **kwargs)

    @property
    def rate(self) -> float:
        """The current sampling rate R = T / P."""
        return self._threshold / HASH_MODULUS

    @property
    def references(self) -> int:
        return self._references

    @property
    def sampled_references(self) -> int:
        return self._sampled_references

    @property
    def tracked_keys(self) -> int:
        return len(self._tree)

    def access(self, key: Any, size: int = 1) -> float | None:
        """Record one reference as a one-chunk request; return its scaled distance (inf for
        a first reference), or None when the key is not sampled."""
        return self.access_request([key], [size])[0]

    def access_request(self, keys: Sequence[Any], sizes: Sequence[int] | int | None = None) -> list[float | None]:
        """Record a request's chunk references in prefix order; return their scaled distances
        (None for keys not sampled). Bad keys or sizes raise before anything is recorded."""
        n = len(keys)
        if sizes is None:
            sizes = [1] * n
        elif isinstance(sizes, int) and not isinstance(sizes, bool):
            sizes = [sizes] * n
        if len(sizes) != n:
            raise InvalidArgumentError(f"{len(sizes)} sizes for {n} keys: pass one size per key")
        for size in sizes:
            if type(size) is not int or size < 0:
                if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0:
                    continue
                raise InvalidArgumentError(f"size {size!r}: use a non-negative integer number of bytes")
        out: list[float | None] = [None] * n
        self._references += n
        self._sample(keys, key_hashes(keys), sizes, range(n), out)
        return out

    def access_request_hashed(self, keys: Sequence[bytes], hashes: np.ndarray, size: int) -> None:
        """`access_request` for keys that are already uniform hashes (tierd chunk keys are
        blake2b outputs): `hashes` holds one value in [0, 2**32) per key, e.g. the keys' first
        four bytes. Only the sampled keys cost Python work, so a 512-chunk request costs a few
        microseconds at rate 0.01."""
        n = len(keys)
        if len(hashes) != n:
            raise InvalidArgumentError(f"{len(hashes)} hashes for {n} keys: pass one hash per key")
        sampled = np.flatnonzero(hashes < self._threshold)
        self._references += n
        self._sample(keys, hashes, [size] * n if len(sampled) else (), sampled, None)

    def _sample(self, keys: Sequence[Any], hashes: Sequence[int], sizes: Sequence[int], indexes: Iterable[int],
                out: list[float | None] | None) -> None:
        """Record the sampled references among `indexes`; their distances go to `out` if given."""
        threshold = self._threshold
        run_max = 0.0
        for i in indexes:
            h = int(hashes[i])  # a Python int: numpy unsigned hashes would wrap when negated for the heap
            if h >= threshold:
                continue
            key = keys[i]
            if isinstance(key, (bytearray, memoryview)):
                key = bytes(key)
            size = int(sizes[i])
            inv_rate = HASH_MODULUS / threshold
            if self._bytes and self._blocks.width == 0.0:
                self._blocks.width = self._prefix.width = float(max(1, size))  # default bucket: first chunk's size
            raw = self._tree.touch(key, size if self._bytes else 1)
            if raw is None:
                dist = math.inf
                self._track_new(key, h)
                threshold = self._threshold  # fixed size may have lowered it mid-request
            else:
                dist = raw * inv_rate
            self._sampled_references += 1
            if dist > run_max:
                run_max = dist
            self._blocks.add(dist, inv_rate)
            self._prefix.add(run_max, inv_rate)
            if out is not None:
                out[i] = dist

    def _track_new(self, key: Hashable, h: int) -> None:
        if self._max_keys is None:
            return
        self._seq += 1
        heapq.heappush(self._heap, (-h, self._seq, key))
        while len(self._tree) > self._max_keys:
            top = -self._heap[0][0]
            while self._heap and -self._heap[0][0] == top:  # equal hashes leave together
                self._tree.drop(heapq.heappop(self._heap)[2])
            self._threshold = top

    def curve(self, grid: Sequence[float]) -> Curve:
        """Estimated block-level LRU hit ratio at each capacity (keys, or bytes in byte mode)."""
        return self._blocks.curve(grid, references=self._references, adjust=self._adjust)

    def prefix_curve(self, grid: Sequence[float]) -> Curve:
        """Estimated prefix-level hit ratio (leading present run / chunks) at each capacity."""
        return self._prefix.curve(grid, references=self._references, adjust=self._adjust)


def shards_fixed_rate_curves(refs: References, grid: Sequence[float], rate: float, *, unit: str = "blocks",
                             adjust: bool = True) -> tuple[Curve, Curve]:
    """Offline fixed-rate SHARDS (block curve, prefix curve), vectorised.

    Gives the same histogram as feeding the references to `ShardsMRC.fixed_rate(rate)`, at
    numpy speed: sample by key, take exact distances of the sampled subsequence, scale by 1/R.
    """
    _check_unit(unit)
    threshold = sampling_threshold(rate)
    mask = shards_mask(refs.keys, rate)
    keys = refs.keys[mask] if isinstance(refs.keys, np.ndarray) else [k for k, m in zip(refs.keys, mask) if m]
    sizes = refs.sizes[mask]
    raw = stack_distances(keys, sizes if unit == "bytes" else None)
    scaled = np.where(raw == COLD, np.inf, raw * (HASH_MODULUS / threshold))
    prefix = running_max_by_request(scaled, refs.request_index[mask])
    width = float(max(1, int(sizes[0]))) if unit == "bytes" and len(sizes) else 1.0  # as ShardsMRC does
    weight = HASH_MODULUS / threshold
    curves = []
    for dist in (scaled, prefix):
        hist = DistanceHistogram(width=width)
        hist.add_many(dist, weight)
        curves.append(hist.curve(grid, references=len(refs.sizes), adjust=adjust))
    return curves[0], curves[1]
