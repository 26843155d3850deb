"""How far a stored chunk is from the chunk an engine just computed for the same key.

The live canary (`tierd.store.verify`) hands this module two copies of one chunk: the fresh KV
a sampled request recomputed, and a copy the store holds (a DRAM slot, or a lower tier's copy
read and decoded into a buffer). Bytes are compared first: identical bytes are the answer for
lossless tiers on an engine whose kernels are deterministic, and cost one memcmp. Only when the
bytes differ is the chunk read as numbers, in its layout's canonical order
[layers, K/V, tokens, heads * head_dim], for the *relative error*:

    error = max over rows r of  ||fresh_r - stored_r||_2 / max(||fresh_r||_2, FLOOR * rms_r)

where a row is one token's K (or V) of one layer (all heads), and rms_r the RMS row norm of its
block (one layer's K, or V, over the chunk's tokens). Each row is measured against its own size,
so an outlier token (an attention sink many times the others' norm) is held to the same
relative bound as the rest; the floor keeps a near-zero row from turning rounding into a huge
ratio. Taking the maximum over rows, not one norm over the chunk, keeps a single damaged page
of a large chunk from vanishing in the average: a wrong row is off by about its whole size (an
error of 1 for zeros, about 1.4 or more for another chunk's KV). Positions that are NaN in both
copies count as equal; any other non-finite difference is an infinite error.

Bounds. A copy that went through a lossy codec is compared against that codec's stated bound
(`LOSSY_BOUNDS`); a lossless copy against the tolerance the engine asks for (0: byte-exact; a
small relative error for engines whose kernels are not bitwise deterministic). The lossy bounds
were measured on the e2e test model's KV and on Gaussian KV with outlier tokens
(tests/store/test_divergence.py pins them): the largest row error seen was 0.33 for int8k-tq3v
and 0.21 for int8k-tq4v (head_dim 32, one KV head: the fewest values per row); the bounds leave
headroom and stay well below the error of a wrong chunk (zeros: 1; another chunk's KV: 1.4 and
up; random bytes: usually infinite).

Comparisons run on a worker thread (numpy releases the GIL); one block is converted at a time,
so the extra memory is a few blocks' worth of float32, not the chunk's.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tierd.layout import Layout

#: Largest relative error a copy decoded by each lossy codec may show against fresh KV.
LOSSY_BOUNDS: dict[str, float] = {"int8k-tq3v": 0.5, "int8k-tq4v": 0.35}
#: For a lossy codec this build does not know (a newer node's objects): the loosest bound.
UNKNOWN_LOSSY_BOUND = max(LOSSY_BOUNDS.values())
#: A row's error is taken relative to its own norm, but never to less than this share of the
#: block's RMS row norm (so a near-zero row does not turn rounding into a huge ratio).
FLOOR = 0.1
#: Codec families that give back the bytes they were given.
LOSSLESS_FAMILIES = ("", "raw", "zstd", "zstd-shuffle")


def codec_bound(codec: str) -> float:
    """The relative error a copy stored with `codec` (a spec as tier headers name it; "" for
    raw) may show: 0 for a lossless codec, the codec's stated bound for a lossy one."""
    name = (codec or "").strip().lower()
    if name.split(":", 1)[0] in LOSSLESS_FAMILIES:
        return 0.0
    return LOSSY_BOUNDS.get(name, UNKNOWN_LOSSY_BOUND)


@dataclass(frozen=True, slots=True)
class Difference:
    """What comparing two copies found: byte-identical, or the relative error between them."""

    exact: bool
    error: float  # 0.0 when exact; inf for a non-finite difference

    def diverged(self, bound: float) -> bool:
        return not self.exact and not self.error <= bound


def compare(fresh: memoryview, stored: memoryview, layout: Layout) -> Difference:
    """The difference between `fresh` and `stored`, two chunks of `layout` (raw canonical bytes)."""
    if len(fresh) != len(stored) or len(fresh) != layout.chunk_bytes:
        raise ValueError(f"chunks of {len(fresh)} and {len(stored)} bytes; layout {layout.layout_id} has "
                         f"{layout.chunk_bytes}")
    if fresh == stored:
        return Difference(True, 0.0)
    blocks = layout.num_layers * layout.kv_factor
    width = layout.num_kv_heads * layout.head_dim
    a = np.frombuffer(fresh, dtype=np.uint8).reshape(blocks, -1)
    b = np.frombuffer(stored, dtype=np.uint8).reshape(blocks, -1)
    worst = 0.0
    for i in range(blocks):
        if a[i].tobytes() == b[i].tobytes():
            continue
        worst = max(worst, _block_error(_floats(a[i], layout.dtype).reshape(layout.chunk_tokens, width),
                                        _floats(b[i], layout.dtype).reshape(layout.chunk_tokens, width)))
        if worst == float("inf"):
            break
    return Difference(False, worst)


def _block_error(f: np.ndarray, s: np.ndarray) -> float:
    """Max row error of one block, over the block's RMS row norm (see the module docstring)."""
    nan_f, nan_s = np.isnan(f), np.isnan(s)
    if (nan_f != nan_s).any():
        return float("inf")
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.where((f == s) | nan_f, 0.0, f.astype(np.float64) - s)  # equal infinities are equal too
    if not np.isfinite(d).all():
        return float("inf")
    rows = np.sqrt(np.einsum("ij,ij->i", d, d))
    if not rows.any():
        return 0.0
    finite = np.where(np.isfinite(f), f, 0.0)
    norms = np.sqrt(np.einsum("ij,ij->i", finite, finite, dtype=np.float64))
    floor = FLOOR * float(np.sqrt(np.mean(norms * norms)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((rows / np.maximum(norms, floor)).max()) if floor > 0.0 else float("inf")


def _floats(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Bytes of one block as float32 (float64 would double the memory for nothing)."""
    if dtype == "float32":
        return raw.view("<f4")
    if dtype == "float16":
        return raw.view("<f2").astype(np.float32)
    if dtype == "bfloat16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype in ("float8_e4m3fn", "float8_e5m2"):
        return _fp8_table(dtype)[raw]
    if dtype == "int8":
        return raw.view(np.int8).astype(np.float32)
    if dtype == "uint8":
        return raw.astype(np.float32)
    raise ValueError(f"dtype {dtype!r}: no comparison for it")


@lru_cache(maxsize=2)
def _fp8_table(dtype: str) -> np.ndarray:
    """The value of each of the 256 bytes of an fp8 format, as float32."""
    codes = np.arange(256, dtype=np.uint16)
    if dtype == "float8_e5m2":  # the high byte of a float16
        return (codes << 8).astype(np.uint16).view(np.float16).astype(np.float32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    value = np.where(exp == 0, man / 8 * 2.0 ** -6, (1 + man / 8) * 2.0 ** (exp.astype(np.float64) - 7))
    value = np.where((exp == 0xF) & ((codes & 0x7) == 0x7), np.nan, value)  # e4m3fn: no infinities
    return (sign * value).astype(np.float32)
