"""Which keys SHARDS samples: a deterministic hash of the key compared with a threshold.

A reference is sampled iff `key_hash(key) < T`, where `key_hash` is xxh3-64 of the key bytes
mod P = 2**32 (ints hash as their 8-byte little-endian encoding); the rate is R = T / P. The
hash is the same in every process, so the online estimator, its offline twin and a replay of
a recorded trace all sample the same keys.
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
import xxhash

from tierd.errors import InvalidArgumentError
from tierd.mrc.references import key_ids

#: SHARDS hash modulus P: a reference is sampled iff key_hash(key) < T, rate R = T / P.
HASH_MODULUS = 1 << 32


def key_bytes(key: Any) -> bytes:
    """The bytes a key is hashed as: bytes as they are, ints as 8-byte little-endian."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        k = int(key)
        try:
            return k.to_bytes(8, "little", signed=k < 0)
        except OverflowError:
            raise InvalidArgumentError(f"key {k}: integer keys must fit in 64 bits") from None
    raise InvalidArgumentError(f"key {key!r}: use bytes or a 64-bit integer as a key")


def key_hash(key: Any) -> int:
    """Deterministic sampling hash of a key in [0, HASH_MODULUS): same in every process."""
    return xxhash.xxh3_64_intdigest(key_bytes(key)) % HASH_MODULUS


def key_hashes(keys: Sequence[Any]) -> list[int]:
    """key_hash of every key; the common key types take a fast path (this is the per-reference
    cost of SHARDS for the keys it does not sample)."""
    digest = xxhash.xxh3_64_intdigest
    mask = HASH_MODULUS - 1  # the modulus is a power of two
    out = []
    for k in keys:
        t = type(k)
        if t is bytes:
            out.append(digest(k) & mask)
        elif t is int and 0 <= k < 1 << 63:
            out.append(digest(k.to_bytes(8, "little")) & mask)
        else:
            out.append(digest(key_bytes(k)) & mask)
    return out


def sampling_threshold(rate: float) -> int:
    """The SHARDS threshold T for a sampling rate R in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or not 0.0 < rate <= 1.0:
        raise InvalidArgumentError(f"sample rate {rate!r}: use a number in (0, 1], e.g. 0.01")
    return max(1, round(rate * HASH_MODULUS))


def shards_mask(keys: Sequence[Hashable] | np.ndarray, rate: float) -> np.ndarray:
    """Which references fixed-rate SHARDS samples at `rate` (the same test ShardsMRC applies)."""
    threshold = sampling_threshold(rate)
    ids, distinct = key_ids(keys)
    sampled_key = np.asarray(key_hashes(distinct), dtype=np.int64) < threshold
    return sampled_key[ids] if len(ids) else np.zeros(0, dtype=bool)
