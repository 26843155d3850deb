"""`raw`: the chunk's bytes as they are, behind the codec header.

Why a codec at all: a tier configured without compression still gets the header's checks
(codec, layout id, lengths, body checksum), and every tier stores the same kind of blob.
"""
from __future__ import annotations

from tierd.codecs.base import Buffer, Codec, CodecHeader, CodecId
from tierd.errors import CodecError
from tierd.layout import Layout


class RawCodec(Codec):
    """Identity body; lossless; decode is one copy."""

    name = "raw"
    lossless = True
    codec_id = CodecId.RAW
    codec_version = 1

    def _params(self, layout: Layout) -> dict[str, int]:
        return {}

    def _encode_body(self, payload: memoryview, layout: Layout) -> Buffer:
        return payload

    def _decode_body(self, body: memoryview, header: CodecHeader, layout: Layout, out: memoryview) -> None:
        if len(body) != len(out):
            raise CodecError(f"raw chunk body_length: expected {len(out)}, found {len(body)}")
        out[:] = body

    def _max_body_bytes(self, layout: Layout) -> int:
        return layout.chunk_bytes
