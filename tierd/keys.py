"""Chunk keys: content addresses of token prefixes.

A prompt's tokens are cut into chunks of `layout.chunk_tokens`. Chunk i's key is
blake2b-128(key_{i-1} || token ids of chunk i as little-endian int64), and key_{-1} is a seed
derived from the namespace and the layout identity. A key therefore names the whole prefix up to
and including its chunk, in one model/shard/dtype and one namespace, and is the same in every
process, on every machine and after every restart (no random seed, no Python `hash()`).

Tokens are not all that decides a chunk's KV: a LoRA adapter, the images overlapping the chunk,
an engine's per-request salt change it too. A connector passes those as the chunk's *extra*
bytes (`encode_extras`: canonical msgpack, never `repr` or `hash()` of objects), and a chunk
with extras is hashed under its own blake2b personalisation, over the previous key, the token
count, the tokens and the extras. A different personalisation keeps the two forms apart (no
token sequence with no extras can hash like a shorter one with extras), and a chunk without
extras keeps exactly the key it had before extras existed. Since keys chain, extras in chunk i
change the keys of chunks i, i+1, ... (a salt in chunk 0 changes every key).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import msgpack
import numpy as np

from tierd.errors import InvalidArgumentError, shown
from tierd.layout import Layout

KEY_BYTES = 16
#: The longest namespace, in UTF-8 bytes. One limit for every entry point and every medium: a
#: namespace the store accepts must fit the NVMe and object headers, or its chunks could never
#: be written down (and a write-down that fails for one tenant stalls it for all).
MAX_NAMESPACE_BYTES = 255
_SEED_TAG = b"tierd-keys-v1\x00"
#: blake2b personalisation of a chunk hashed with extras (at most 16 bytes).
_EXTRAS_PERSON = b"tierd-extras-v1"
#: blake2b personalisation of a tenant's store keys (`tenant_keys`).
_TENANT_PERSON = b"tierd-tenant-v1"


def namespace_problem(namespace: object) -> str | None:
    """What is wrong with `namespace` as a namespace name, or None if nothing is. Callers raise
    it in their own error type (a bad flag is a ConfigError, a bad request an InvalidArgumentError)."""
    if not isinstance(namespace, str) or not namespace:
        return f"namespace {shown(namespace)}: use a non-empty string"
    if "\x00" in namespace:
        return f"namespace {shown(namespace)}: must not contain NUL"
    try:
        size = len(namespace.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no medium could write it down
        return f"namespace {shown(namespace)}: is not valid Unicode text (it holds a lone surrogate)"
    if size > MAX_NAMESPACE_BYTES:
        return (f"namespace {shown(namespace)} is {size} bytes in UTF-8: use at most {MAX_NAMESPACE_BYTES} "
                "bytes")
    return None


def check_namespace(namespace: object) -> str:
    """`namespace` if it is a valid namespace name, else InvalidArgumentError saying why."""
    problem = namespace_problem(namespace)
    if problem is not None:
        raise InvalidArgumentError(problem)
    assert isinstance(namespace, str)
    return namespace


def tenant_keys(namespace: str, keys: Sequence[bytes]) -> list[bytes]:
    """The keys under which the store keeps a tenant's chunks: each key a tenant's connection
    names, hashed again with the tenant's namespace (under a personalisation of its own). A
    tenant's keys are therefore its own whatever key it sends: a key computed with another
    namespace's seed lands in its own key space, never on the other's chunk, and a key another
    tenant holds is neither a hit nor a "stored already" to it (`tierd.daemon.scope`)."""
    base = hashlib.blake2b(namespace.encode("utf-8") + b"\x00", digest_size=KEY_BYTES, person=_TENANT_PERSON)
    out = []
    for key in keys:
        h = base.copy()
        h.update(key)
        out.append(h.digest())
    return out


def seed_key(layout: Layout, namespace: str = "default") -> bytes:
    """The chain's starting value for a namespace and layout."""
    check_namespace(namespace)
    material = _SEED_TAG + namespace.encode() + b"\x00" + layout.identity()
    return hashlib.blake2b(material, digest_size=KEY_BYTES).digest()


def _as_int64(token_ids: Sequence[int] | np.ndarray | Any) -> np.ndarray:
    if hasattr(token_ids, "detach"):  # a torch tensor, without importing torch
        token_ids = token_ids.detach().cpu().numpy()
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"token ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(f"token ids must be integers, got dtype {arr.dtype}")
    return arr.astype("<i8", copy=False)


ExtraValue = str | int | bytes


def encode_extras(items: Iterable[Sequence[ExtraValue]]) -> bytes | None:
    """Canonical bytes of what, besides its tokens, changes one chunk's KV; None if nothing does.

    Each item is a short tagged tuple of strings, integers and bytes, e.g. ("lora", name,
    fingerprint) or ("mm", identifier, offset, length); the order of items is part of the value,
    so callers list them in a fixed order. Other types (floats, objects) are refused: they have
    no single canonical encoding."""
    out: list[list[ExtraValue]] = []
    for item in items:
        row = list(item)
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (str, int, bytes)):
                raise InvalidArgumentError(f"extra key value {shown(v)}: use str, int or bytes")
            if isinstance(v, int) and not -(1 << 63) <= v < (1 << 64):
                raise InvalidArgumentError(f"extra key value {v}: integers must fit 64 bits")
        out.append(row)
    if not out:
        return None
    try:
        return msgpack.packb(out, use_bin_type=True)
    except UnicodeEncodeError:
        raise InvalidArgumentError("extra key value: a string is not valid Unicode text") from None


def chunk_keys(
    layout: Layout,
    token_ids: Sequence[int] | np.ndarray | Any,
    namespace: str = "default",
    *,
    include_partial: bool = False,
    extras: Sequence[bytes | None] | None = None,
) -> list[bytes]:
    """Keys of the chunks of `token_ids`; the trailing partial chunk only if `include_partial`.

    `extras[i]` is chunk i's extra bytes (`encode_extras`) or None; without `extras` (or with
    None for a chunk) a chunk is keyed by its tokens alone, as before extras existed. `extras`
    must cover every chunk keyed (it may be longer): a missing entry would silently key a chunk
    without, say, its adapter."""
    tokens = _as_int64(token_ids)
    n = layout.chunk_tokens
    count = len(tokens) // n + (1 if include_partial and len(tokens) % n else 0)
    if extras is not None and len(extras) < count:
        raise InvalidArgumentError(f"extras cover {len(extras)} chunks, but the tokens make {count}: give one per chunk")
    prev = seed_key(layout, namespace)
    keys: list[bytes] = []
    for i in range(count):
        chunk = tokens[i * n : (i + 1) * n].tobytes()
        extra = extras[i] if extras is not None else None
        if extra is None:
            h = hashlib.blake2b(prev, digest_size=KEY_BYTES)
            h.update(chunk)
        else:
            if not isinstance(extra, bytes):
                raise InvalidArgumentError(f"extras[{i}] {shown(extra)}: use bytes from encode_extras, or None")
            h = hashlib.blake2b(prev, digest_size=KEY_BYTES, person=_EXTRAS_PERSON)
            h.update(len(chunk).to_bytes(8, "little"))
            h.update(chunk)
            h.update(extra)
        prev = h.digest()
        keys.append(prev)
    return keys
