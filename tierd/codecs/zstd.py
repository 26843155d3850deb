"""`zstd[:LEVEL]` and `zstd-shuffle[:LEVEL]`: lossless compression with Zstandard.

KV in bf16/fp16 is noise in the low byte (mantissa) and structure in the high byte (sign,
exponent, top of the mantissa). Interleaved, the two defeat zstd's matcher; `zstd-shuffle`
first splits each element into byte planes (all low bytes, then all high bytes; four planes for
float32, blosc-style) so the exponent plane compresses on its own.

Measured (`python -m bench.codecs --quick`, shared 2-core CPU, 2026-12-01; 32 MiB bf16 chunk of
random-normal KV with four x20 outlier key channels per head): shuffling helps. Ratio 1.28x for
zstd:1 and zstd:3, 1.46x for zstd-shuffle:1 and 1.40x for zstd-shuffle:3; the shuffle and the
unshuffle (~20 ms and ~10 ms for 32 MiB) cost less than the zstd work they save, so
zstd-shuffle:1 decodes as fast as zstd:3 or faster. Random-normal bf16 is a hard case: only the
exponent byte is redundant, so no lossless codec gets much further on it; uniformly random bits
do not compress at all (1.00x). Real KV with more structure does better. The same data as fp16
(5-bit exponent, 10-bit mantissa): 1.09x plain, 1.18x shuffled; as float32: 1.08x plain, 1.19x
shuffled (zstd-shuffle:1), so the shuffle helps for every dtype, and most for bf16.
"""
from __future__ import annotations

import numpy as np
import zstandard

from tierd.codecs.base import FLAG_SHUFFLE, Buffer, Codec, CodecHeader, CodecId
from tierd.errors import CodecError
from tierd.layout import Layout

DEFAULT_LEVEL = 3
#: Levels accepted in a spec: zstd's fast levels -1..-7 and the normal 1..22 (0 would silently mean 3).
LEVELS = tuple(range(-7, 0)) + tuple(range(1, zstandard.MAX_COMPRESSION_LEVEL + 1))


def compress_bound(size: int) -> int:
    """ZSTD_COMPRESSBOUND: the most bytes one zstd frame of `size` input bytes can take."""
    margin = ((128 * 1024 - size) >> 11) if size < 128 * 1024 else 0
    return size + (size >> 8) + margin + 64  # + frame header / checksum slack


def shuffle(payload: memoryview, itemsize: int) -> np.ndarray:
    """Byte planes of `payload`: byte 0 of every element, then byte 1, ... (one copy)."""
    flat = np.frombuffer(payload, dtype=np.uint8)
    return np.ascontiguousarray(flat.reshape(-1, itemsize).T)


_WORDS = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def unshuffle_into(planes: Buffer, itemsize: int, out: memoryview) -> None:
    """Inverse of `shuffle`, written straight into `out`: whole little-endian words built by
    shift-and-or of the planes (a byte-strided transposed copy measured 10x slower)."""
    src = np.frombuffer(planes, dtype=np.uint8).reshape(itemsize, -1)
    dst = np.frombuffer(out, dtype=_WORDS[itemsize])
    np.copyto(dst, src[itemsize - 1], casting="unsafe")
    for k in range(itemsize - 2, -1, -1):
        np.left_shift(dst, 8, out=dst)
        np.bitwise_or(dst, src[k], out=dst, casting="unsafe")


class ZstdCodec(Codec):
    """Zstandard at `level`, optionally after a byte shuffle; lossless.

    The level and shuffle flag are written into the header and the decoder follows the header,
    so any zstd codec decodes any zstd blob (levels do not change the format).
    """

    lossless = True
    codec_id = CodecId.ZSTD
    codec_version = 1

    def __init__(self, level: int = DEFAULT_LEVEL, shuffle: bool = False) -> None:
        if level not in LEVELS:
            raise CodecError(f"zstd level {level!r}: use an integer in -7..-1 or 1..{LEVELS[-1]}")
        self.level = level
        self.shuffle = shuffle
        self.name = f"{'zstd-shuffle' if shuffle else 'zstd'}:{level}"

    def _itemsize(self, layout: Layout) -> int:
        return layout.itemsize if self.shuffle else 1

    def _params(self, layout: Layout) -> dict[str, int]:
        shuffled = self._itemsize(layout) > 1
        return {"flags": FLAG_SHUFFLE if shuffled else 0, "level": self.level}

    def _encode_body(self, payload: memoryview, layout: Layout) -> Buffer:
        itemsize = self._itemsize(layout)
        data: Buffer = shuffle(payload, itemsize) if itemsize > 1 else payload
        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def _decode_body(self, body: memoryview, header: CodecHeader, layout: Layout, out: memoryview) -> None:
        if header.flags & ~FLAG_SHUFFLE:
            raise CodecError(f"zstd chunk flags: expected a subset of {FLAG_SHUFFLE:#x}, found {header.flags:#x}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=len(out))
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd chunk body does not decompress: {exc}") from None
        if len(raw) != len(out):
            raise CodecError(f"zstd chunk decompressed length: expected {len(out)}, found {len(raw)}")
        if header.flags & FLAG_SHUFFLE and layout.itemsize > 1:
            unshuffle_into(raw, layout.itemsize, out)
        else:
            out[:] = raw

    def _max_body_bytes(self, layout: Layout) -> int:
        return compress_bound(layout.chunk_bytes)
