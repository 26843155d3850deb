"""The codec contract and the self-describing header every encoded chunk starts with.

A codec turns the raw canonical bytes of one chunk (see `tierd.layout`) into a blob a slower
tier stores, and back. The blob is `CodecHeader` (64 bytes) followed by the codec's body. The
header is there so a blob can never be decoded as something it is not: the decoder checks the
magic, the header's own checksum, the codec and its version, the parameters that change the
body's meaning, the layout id, both lengths and an xxh3 checksum of the body, and raises
`CodecError` naming the field (expected vs found) on any difference. Callers treat that error
as a miss; a codec never writes garbage into `out`.

Header, little-endian, 64 bytes:

    offset size field
         0    4 magic          b"TKVC"
         4    1 format         header format version (1)
         5    1 codec_id       1 raw, 2 zstd, 3 int8k-tq (see CodecId)
         6    1 codec_version  bumped when a codec's body format changes
         7    1 flags          bit 0: byte shuffle before zstd
         8    4 level          zstd level (i32), 0 for other codecs
        12    2 group_size     key-scale group of the quantised codec, 0 for others
        14    1 bits           value bits of the quantised codec (3 or 4), 0 for others
        15    1 reserved       0
        16   16 layout_id      Layout.layout_id, 16 ASCII hex digits
        32    8 raw_length     bytes of the decoded chunk (layout.chunk_bytes)
        40    8 body_length    bytes following the header
        48    8 body_xxh3      xxh3_64 of the body
        56    8 header_xxh3    xxh3_64 of bytes [0, 56): a flipped header bit is caught first
"""
from __future__ import annotations

import enum
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

import xxhash

from tierd.errors import CodecError
from tierd.layout import Layout

#: What `encode` accepts and `decode` reads: anything with the buffer protocol, C-contiguous.
Buffer = Union[bytes, bytearray, memoryview]

MAGIC = b"TKVC"
HEADER_FORMAT = 1
_STRUCT = struct.Struct("<4sBBBBiHBB16sQQQ")
_HASH = struct.Struct("<Q")
HEADER_BYTES = _STRUCT.size + _HASH.size
assert HEADER_BYTES == 64

FLAG_SHUFFLE = 0x01


class CodecId(enum.IntEnum):
    """Wire ids of the codec families. Never renumber: ids are stored on disk and in buckets."""

    RAW = 1
    ZSTD = 2
    INT8K_TQ = 3


@dataclass(frozen=True, slots=True)
class CodecHeader:
    """The fixed header of an encoded chunk; `pack`/`unpack` are exact inverses."""

    codec_id: int
    codec_version: int
    layout_id: str
    raw_length: int
    body_length: int
    body_xxh3: int
    flags: int = 0
    level: int = 0
    group_size: int = 0
    bits: int = 0
    format: int = HEADER_FORMAT

    def pack(self) -> bytes:
        layout_id = self.layout_id.encode("ascii")
        if len(layout_id) != 16:
            raise CodecError(f"layout_id {self.layout_id!r}: must be 16 ASCII characters (Layout.layout_id)")
        try:
            head = _STRUCT.pack(MAGIC, self.format, self.codec_id, self.codec_version, self.flags, self.level,
                                self.group_size, self.bits, 0, layout_id, self.raw_length, self.body_length,
                                self.body_xxh3)
        except struct.error as exc:
            raise CodecError(f"codec header field out of range: {exc} ({self!r})") from None
        return head + _HASH.pack(xxhash.xxh3_64_intdigest(head))

    @classmethod
    def unpack(cls, blob: Buffer) -> "CodecHeader":
        """Parse and self-check the header at the start of `blob` (magic, size, header checksum)."""
        view = memoryview(blob).cast("B")
        if len(view) < HEADER_BYTES:
            raise CodecError(f"encoded chunk truncated: {len(view)} bytes, shorter than the "
                             f"{HEADER_BYTES}-byte codec header")
        head = bytes(view[:_STRUCT.size])
        (magic, fmt, codec_id, codec_version, flags, level, group_size, bits, _reserved, layout_id,
         raw_length, body_length, body_xxh3) = _STRUCT.unpack(head)
        if magic != MAGIC:
            raise CodecError(f"codec header magic: expected {MAGIC!r}, found {magic!r} (not an encoded chunk)")
        (stored,) = _HASH.unpack(view[_STRUCT.size:HEADER_BYTES])
        computed = xxhash.xxh3_64_intdigest(head)
        if stored != computed:
            raise CodecError(f"codec header checksum: expected {computed:#018x}, found {stored:#018x} "
                             "(corrupted header)")
        if fmt != HEADER_FORMAT:
            raise CodecError(f"codec header format: expected {HEADER_FORMAT}, found {fmt} (written by another "
                             "tierd version)")
        try:
            layout_text = layout_id.decode("ascii")
        except UnicodeDecodeError:
            raise CodecError(f"codec header layout_id {layout_id!r}: not ASCII") from None
        return cls(codec_id=codec_id, codec_version=codec_version, layout_id=layout_text, raw_length=raw_length,
                   body_length=body_length, body_xxh3=body_xxh3, flags=flags, level=level, group_size=group_size,
                   bits=bits, format=fmt)


def read_header(blob: Buffer) -> CodecHeader:
    """The header of an encoded chunk (self-checked), e.g. to show its codec and ratio."""
    return CodecHeader.unpack(blob)


def _expect(field: str, expected: object, found: object) -> None:
    if expected != found:
        raise CodecError(f"encoded chunk {field}: expected {expected!r}, found {found!r}")


class Codec(ABC):
    """Encodes one chunk's canonical bytes for a slower tier and decodes them back.

    Contract (for the tier that calls it, on its I/O or promotion thread):
    - `encode(payload, layout)`: `payload` is exactly `layout.chunk_bytes` canonical bytes; returns
      header + body, at most `max_encoded_bytes(layout)` bytes. CPU-bound, blocks on nothing else.
    - `decode(blob, layout, out)`: writes exactly `layout.chunk_bytes` bytes into `out`, or raises
      `CodecError` (and the caller counts a miss) when the blob is not this codec's encoding of a
      chunk of `layout`, is truncated or corrupted. `out` may be partly written when it raises.
    - `lossless`: whether decode(encode(x)) == x byte for byte.
    Codecs hold only their parameters; one instance may be shared by threads.
    """

    #: The spec that builds this codec with `tierd.codecs.get_codec` (e.g. "zstd-shuffle:3").
    name: str
    lossless: bool
    codec_id: CodecId
    codec_version: int

    # -- what each codec provides -------------------------------------------------------------------

    @abstractmethod
    def _params(self, layout: Layout) -> dict[str, int]:
        """Header fields (flags, level, group_size, bits) this codec writes for `layout`."""

    @abstractmethod
    def _encode_body(self, payload: memoryview, layout: Layout) -> Buffer:
        """The body for `payload` (already checked to be `layout.chunk_bytes` long)."""

    @abstractmethod
    def _decode_body(self, body: memoryview, header: CodecHeader, layout: Layout, out: memoryview) -> None:
        """Write the chunk into `out` (already checked: `layout.chunk_bytes` long, writable)."""

    @abstractmethod
    def _max_body_bytes(self, layout: Layout) -> int:
        """Largest body `_encode_body` can return for `layout`."""

    # -- the shared framing -------------------------------------------------------------------------

    def max_encoded_bytes(self, layout: Layout) -> int:
        """Upper bound of `len(encode(..., layout))`, for sizing buffers and capacity."""
        return HEADER_BYTES + self._max_body_bytes(layout)

    def encode(self, payload: Buffer, layout: Layout) -> bytes:
        view = memoryview(payload).cast("B")
        if len(view) != layout.chunk_bytes:
            raise CodecError(f"{self.name}: payload of {len(view)} bytes, expected layout.chunk_bytes="
                             f"{layout.chunk_bytes} for layout {layout.layout_id}")
        params = self._params(layout)
        body = memoryview(self._encode_body(view, layout)).cast("B")
        header = CodecHeader(codec_id=int(self.codec_id), codec_version=self.codec_version,
                             layout_id=layout.layout_id, raw_length=len(view), body_length=len(body),
                             body_xxh3=xxhash.xxh3_64_intdigest(body), **params)
        return b"".join((header.pack(), body))

    def decode(self, blob: Buffer, layout: Layout, out: memoryview) -> None:
        dest = memoryview(out).cast("B")
        if dest.readonly:
            raise CodecError(f"{self.name}: decode needs a writable `out` buffer")
        if len(dest) != layout.chunk_bytes:
            raise CodecError(f"{self.name}: `out` is {len(dest)} bytes, expected layout.chunk_bytes="
                             f"{layout.chunk_bytes}")
        view = memoryview(blob).cast("B")
        header = CodecHeader.unpack(view)
        self.check_header(header, layout)
        found = len(view) - HEADER_BYTES
        if found < header.body_length:
            raise CodecError(f"encoded chunk truncated: body_length expected {header.body_length}, found "
                             f"{found} bytes after the header")
        _expect("length (header + body_length)", HEADER_BYTES + header.body_length, len(view))
        body = view[HEADER_BYTES:]
        computed = xxhash.xxh3_64_intdigest(body)
        if computed != header.body_xxh3:
            raise CodecError(f"encoded chunk body checksum: expected {header.body_xxh3:#018x}, found "
                             f"{computed:#018x} (corrupted body)")
        self._decode_body(body, header, layout, dest)

    def check_header(self, header: CodecHeader, layout: Layout) -> None:
        """Raise CodecError unless `header` is this codec's encoding of a chunk of `layout`."""
        if header.codec_id != int(self.codec_id):
            try:
                found = CodecId(header.codec_id).name.lower()
            except ValueError:
                found = f"unknown id {header.codec_id}"
            raise CodecError(f"encoded chunk codec: expected {self.codec_id.name.lower()} (this tier's "
                             f"{self.name!r}), found {found}")
        _expect("codec_version", self.codec_version, header.codec_version)
        _expect("layout_id", layout.layout_id, header.layout_id)
        _expect("raw_length", layout.chunk_bytes, header.raw_length)
        for field, value in self._params(layout).items():
            if field in self._decode_params():
                _expect(field, value, getattr(header, field))
        if header.body_length > self._max_body_bytes(layout):
            raise CodecError(f"encoded chunk body_length {header.body_length}: more than this codec ever "
                             f"writes for layout {layout.layout_id} ({self._max_body_bytes(layout)})")

    def _decode_params(self) -> frozenset[str]:
        """Header params that must equal this codec's own to decode (others are read from the header)."""
        return frozenset()

    def __repr__(self) -> str:
        return f"<codec {self.name}>"
