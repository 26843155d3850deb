"""`int8k-tq3v` / `int8k-tq4v`: PolyKV-style asymmetric lossy quantisation of a KV chunk.

Keys and values are hurt differently by quantisation, so they get different treatment:

- Keys: int8, symmetric, one fp16 scale per group of 64 consecutive values along the head dim
  (groups never cross a head). Keys have outlier channels; a per-tensor scale would spend all
  of int8's range on them, a per-group scale confines the damage to the group.
- Values: each vector (one head's `head_dim` values of one token) is split into its L2 norm
  (kept as fp16) and its direction. The direction is multiplied by fixed seeded random signs
  and rotated with an orthonormal Walsh–Hadamard transform; scaled by sqrt(d) its entries are
  then close to N(0,1) whatever the input looked like, for head_dim of 32 and more (without the
  signs, near-constant vectors land on a single Hadamard row: measured worst cosine 0.62 instead
  of 0.98 on the near-constant vectors of tests/codecs), so the Lloyd-Max centroids of
  N(0,1) are the best fixed scalar quantiser: 8 centroids (3 bits, MSE 0.0345 of the signal)
  or 16 (4 bits, MSE 0.0095). Indices are bit-packed: 8 values in 3 bytes, or 2 per byte.

Decoding inverts: unpack, centroid lookup, /sqrt(d), inverse transform, x signs, x norm.

A bf16 chunk costs 1 + 2/64 bytes per key value and 3/8 + 2/head_dim bytes per value value:
2.81x smaller at head_dim 128 with 3 bits (2.59x with 4 bits), scales, norms and header included.

Everything is vectorised torch (no loop per vector) and runs on the codec's `device`. On CPU a
few layers at a time (see `QuantCodec._blocks`); with `device="cuda"` the whole chunk is moved
there, transformed by the same ops and the body copied back (written for, not yet run on, a GPU).

Limits, by design: head_dim must be a power of two (the Hadamard transform); dtypes bfloat16,
float16 and float32 (computed in float32, written back in the layout's dtype); kv_factor 2. A
value vector with norm above 65504 (fp16 max) is clipped to that norm, and a key group whose
absolute maximum is below ~1e-5 keeps only a few significant bits (fp16 subnormal scale); both
are far outside the range of KV activations we know of.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from tierd.codecs.base import Buffer, Codec, CodecHeader, CodecId
from tierd.errors import CodecError
from tierd.layout import Layout

#: Lloyd-Max centroids of N(0,1): the fixed points of Lloyd's iteration (cell means), 4 decimals.
LLOYD_MAX_3BIT = (-2.1519, -1.3439, -0.7560, -0.2451, 0.2451, 0.7560, 1.3439, 2.1519)
LLOYD_MAX_4BIT = (-2.7326, -2.0690, -1.6180, -1.2562, -0.9423, -0.6568, -0.3880, -0.1284,
                  0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326)
CENTROIDS = {3: LLOYD_MAX_3BIT, 4: LLOYD_MAX_4BIT}

KEY_GROUP = 64
#: Seed of the random signs. Part of the format: changing it needs a new codec_version.
SIGN_SEED = b"tierd-int8k-tq-signs-v1"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: Up to this head_dim a dense matmul with the +-1 Hadamard matrix beats the butterflies on CPU
#: (BLAS; measured 0.11 s vs 0.32 s for 64Ki vectors of 128 on 2 cores). Same transform.
DENSE_HADAMARD_MAX = 256
#: Values per side (K or V) encoded at a time on CPU; see QuantCodec._blocks.
CPU_BLOCK_VALUES = 1 << 20
_FP16_MAX = 65504.0
_FP16_MIN_SUBNORMAL = 2.0 ** -24


# -- the pieces, pure functions of tensors (any device) ----------------------------------------------

def random_signs(d: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """d fixed pseudo-random +-1 (float32), from blake2b of the seed: the same on every machine,
    torch version and device (torch's generators do not promise that)."""
    nbytes = (d + 7) // 8
    stream = b"".join(hashlib.blake2b(SIGN_SEED + d.to_bytes(4, "little") + i.to_bytes(4, "little")).digest()
                      for i in range((nbytes + 63) // 64))
    bits = np.unpackbits(np.frombuffer(stream[:nbytes], dtype=np.uint8), bitorder="little")[:d]
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32)).to(device)


def hadamard_matrix(d: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The d x d Sylvester Hadamard matrix of +-1 (unnormalised, symmetric, H @ H = d I)."""
    h = torch.ones(1, 1, device=device)
    while h.shape[0] < d:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last dim (a power of two), by
    log2(d) butterfly passes between two buffers. Returns a new tensor; `x` is not changed."""
    d = x.shape[-1]
    n = x.numel() // d
    src = x.reshape(n, d).clone()
    dst = torch.empty_like(src)
    h = 1
    while h < d:
        s = src.view(n, d // (2 * h), 2, h)
        o = dst.view(n, d // (2 * h), 2, h)
        torch.add(s[:, :, 0], s[:, :, 1], out=o[:, :, 0])
        torch.sub(s[:, :, 0], s[:, :, 1], out=o[:, :, 1])
        src, dst = dst, src
        h *= 2
    return src.view(x.shape)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform of the last dim: `fwht`, or for small d the same
    transform as one matmul (faster there). Self-inverse up to a factor d."""
    d = x.shape[-1]
    if d <= DENSE_HADAMARD_MAX:
        return x @ hadamard_matrix(d, x.device)
    return fwht(x)


def quantize_keys(keys: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and fp16 scales (one per `group` values of the last dim) of float32 `keys`."""
    grouped = keys.reshape(-1, group)
    absmax = grouped.abs().amax(dim=1)
    scales = (absmax / 127.0).clamp(_FP16_MIN_SUBNORMAL, _FP16_MAX).to(torch.float16)
    codes = torch.round(grouped / scales.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return codes.reshape(-1), scales


def dequantize_keys(codes: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    return (codes.reshape(-1, group).float() * scales.float().unsqueeze(1)).reshape(-1)


def quantize_values(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid indices (uint8, one per value) and fp16 norms (one per vector) of float32
    `values` shaped [vectors, d]."""
    d = values.shape[-1]
    norms = torch.linalg.vector_norm(values, dim=-1)
    unit = values / torch.where(norms > 0, norms, 1.0).unsqueeze(1)
    # orthonormal rotation H/sqrt(d), then x sqrt(d): the unnormalised transform
    rotated = hadamard(unit * random_signs(d, values.device))
    return nearest_centroid(rotated, bits), norms.clamp(max=_FP16_MAX).to(torch.float16)


def nearest_centroid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 index of the nearest Lloyd-Max centroid of each value (ties to the lower one): the
    number of cell boundaries (midpoints) below it. 2**bits - 1 compare-and-add passes, about 3x
    faster than torch.bucketize on CPU (measured), and exact."""
    c = CENTROIDS[bits]
    indices = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for lower, upper in zip(c, c[1:]):
        indices += x > (lower + upper) / 2
    return indices


def dequantize_values(indices: torch.Tensor, norms: torch.Tensor, bits: int, d: int) -> torch.Tensor:
    """[vectors, d] float32 from `quantize_values`' output."""
    centroids = torch.tensor(CENTROIDS[bits], device=indices.device)
    rotated = centroids[indices.reshape(-1, d).long()]
    # /sqrt(d), inverse orthonormal transform (H/sqrt(d) again): H/d in all
    unit = hadamard(rotated) * random_signs(d, indices.device)
    return unit * (norms.float() / d).unsqueeze(1)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of `count` bit-packed `bits`-bit indices (3 bits: 8 values per 3 bytes)."""
    return (count + 7) // 8 * 3 if bits == 3 else (count + 1) // 2


def pack_bits(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-pack uint8 indices < 2**bits into uint8 bytes (little-endian within each unit)."""
    flat = indices.reshape(-1)
    if bits == 4:
        flat = torch.nn.functional.pad(flat, (0, flat.numel() % 2))
        pairs = flat.view(-1, 2)
        return pairs[:, 0] | (pairs[:, 1] << 4)
    # 8 indices i0..i7 (24 bits, i0 lowest) -> 3 bytes; uint8 shifts drop the bits that spill over
    i = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).view(-1, 8).unbind(dim=1)
    b0 = i[0] | (i[1] << 3) | (i[2] << 6)
    b1 = (i[2] >> 2) | (i[3] << 1) | (i[4] << 4) | (i[5] << 7)
    b2 = (i[5] >> 1) | (i[6] << 2) | (i[7] << 5)
    return torch.stack((b0, b1, b2), dim=1).reshape(-1)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: `count` uint8 indices."""
    if bits == 4:
        return torch.stack((packed & 0x0F, packed >> 4), dim=1).reshape(-1)[:count]
    b0, b1, b2 = packed.view(-1, 3).unbind(dim=1)
    indices = torch.stack((b0 & 7, (b0 >> 3) & 7, (b0 >> 6) | ((b1 & 1) << 2), (b1 >> 1) & 7, (b1 >> 4) & 7,
                           (b1 >> 7) | ((b2 & 3) << 1), (b2 >> 2) & 7, b2 >> 5), dim=1)
    return indices.reshape(-1)[:count]


# -- the codec ---------------------------------------------------------------------------------------

def _tensor(buf: memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor over `buf`: shared when writable, else a copy (torch has no read-only tensors,
    and a view of a read-only buffer would only be a warning away from being written)."""
    if buf.readonly:
        return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype)
    return torch.frombuffer(buf, dtype=torch.uint8).view(dtype)


class QuantCodec(Codec):
    """int8 keys + Hadamard-rotated Lloyd-Max values (`bits` 3 or 4); lossy.

    Body (bytes, in order, fp16 arrays first so they stay 2-byte aligned):
    key scales fp16 [L*T*H*D/group] | value norms fp16 [L*T*H] | key codes int8 [L*T*H*D] |
    packed value indices [packed_bytes(L*T*H*D, bits)], with L layers, T tokens, H heads, D head_dim
    and keys/values in canonical order ([layer, token, head*D + i]).
    """

    lossless = False
    codec_id = CodecId.INT8K_TQ
    codec_version = 1

    def __init__(self, bits: int = 3, device: torch.device | str | None = None) -> None:
        if bits not in CENTROIDS:
            raise CodecError(f"int8k-tq value bits {bits!r}: use 3 or 4")
        self.bits = bits
        self.device = torch.device(device or "cpu")
        self.name = f"int8k-tq{bits}v"

    # -- layout checks and sizes

    def _check_layout(self, layout: Layout) -> None:
        if layout.dtype not in DTYPES:
            raise CodecError(f"{self.name}: layout dtype {layout.dtype!r} is not supported; use a layout of "
                             f"{', '.join(DTYPES)} (or the zstd/raw codecs)")
        if layout.kv_factor != 2:
            raise CodecError(f"{self.name}: layout kv_factor {layout.kv_factor} (MLA latent) has no separate "
                             "keys and values; use the zstd or raw codec")
        d = layout.head_dim
        if d & (d - 1):
            raise CodecError(f"{self.name}: layout head_dim {d} is not a power of two, which the Hadamard "
                             "transform needs; use the zstd or raw codec for this model")

    def _group(self, layout: Layout) -> int:
        return min(KEY_GROUP, layout.head_dim)

    def _sizes(self, layout: Layout) -> tuple[int, int, int, int]:
        """(key scales, value norms, key codes, packed values) byte counts of the body."""
        count = layout.num_layers * layout.chunk_tokens * layout.num_kv_heads * layout.head_dim
        return (2 * count // self._group(layout), 2 * count // layout.head_dim, count,
                packed_bytes(count, self.bits))

    def _params(self, layout: Layout) -> dict[str, int]:
        self._check_layout(layout)
        return {"group_size": self._group(layout), "bits": self.bits}

    def _decode_params(self) -> frozenset[str]:
        return frozenset({"group_size", "bits"})

    def _max_body_bytes(self, layout: Layout) -> int:
        self._check_layout(layout)
        return sum(self._sizes(layout))

    # -- encode / decode

    def _blocks(self, layout: Layout) -> list[tuple[int, int]]:
        """Layer ranges processed at a time. On CPU about 1Mi values per block keeps the float32
        temporaries in cache and in malloc's reused heap (whole-chunk temporaries are fresh mmaps
        that page-fault; blocks measured ~2x faster); one block on a GPU. A block must hold a
        multiple of 8 values so the 3-bit packing of blocks lines up."""
        per_layer = layout.chunk_tokens * layout.num_kv_heads * layout.head_dim
        if self.device.type != "cpu" or per_layer % 8:
            return [(0, layout.num_layers)]
        step = max(1, CPU_BLOCK_VALUES // per_layer)
        return [(lo, min(lo + step, layout.num_layers)) for lo in range(0, layout.num_layers, step)]

    def _offsets(self, layout: Layout, lo: int, hi: int) -> list[tuple[int, int]]:
        """(start, end) in the body of each section's part for layers [lo, hi)."""
        out, base = [], 0
        for size in self._sizes(layout):
            per_layer = size // layout.num_layers
            out.append((base + lo * per_layer, base + hi * per_layer))
            base += size
        return out

    def _encode_body(self, payload: memoryview, layout: Layout) -> Buffer:
        group, d = self._group(layout), layout.head_dim
        chunk = _tensor(payload, DTYPES[layout.dtype]).view(layout.chunk_shape)
        body = torch.empty(sum(self._sizes(layout)), dtype=torch.uint8, device=self.device)
        for lo, hi in self._blocks(layout):
            block = chunk[lo:hi].to(self.device)
            codes, scales = quantize_keys(block[:, 0].float(), group)
            indices, norms = quantize_values(block[:, 1].float().reshape(-1, d), self.bits)
            parts = (scales.view(torch.uint8), norms.view(torch.uint8), codes.view(torch.uint8),
                     pack_bits(indices, self.bits))
            for (start, end), part in zip(self._offsets(layout, lo, hi), parts):
                body[start:end].copy_(part.reshape(-1))
        return memoryview(body.cpu().numpy())

    def _decode_body(self, body: memoryview, header: CodecHeader, layout: Layout, out: memoryview) -> None:
        sizes = self._sizes(layout)
        if len(body) != sum(sizes):
            raise CodecError(f"{self.name} chunk body_length: expected {sum(sizes)} for layout "
                             f"{layout.layout_id}, found {len(body)}")
        group, d = self._group(layout), layout.head_dim
        raw = _tensor(body, torch.uint8).to(self.device)
        dest = torch.frombuffer(out, dtype=torch.uint8).view(DTYPES[layout.dtype]).view(layout.chunk_shape)
        for lo, hi in self._blocks(layout):
            scales_b, norms_b, codes_b, packed = (raw[a:b] for a, b in self._offsets(layout, lo, hi))
            keys = dequantize_keys(codes_b.view(torch.int8), scales_b.view(torch.float16), group)
            values = dequantize_values(unpack_bits(packed, self.bits, codes_b.numel()),
                                       norms_b.view(torch.float16), self.bits, d)
            shape = dest[lo:hi, 0].shape
            dest[lo:hi, 0].copy_(keys.view(shape))
            dest[lo:hi, 1].copy_(values.view(shape))
