"""KV chunk codecs for the slower tiers: a spec string names one, every blob names its own.

    get_codec("zstd-shuffle:3").encode(payload, layout) -> blob     (header + body)
    get_codec("zstd-shuffle:3").decode(blob, layout, out)           (CodecError = a miss)
    codec_for_blob(blob).decode(blob, layout, out)                  (whatever codec wrote it)

Specs: "raw", "zstd", "zstd:LEVEL", "zstd-shuffle", "zstd-shuffle:LEVEL" (LEVEL -7..-1 or 1..22,
default 3), "int8k-tq3v", "int8k-tq4v". Lossless: raw, zstd*. See each module for why.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tierd.codecs.base import FLAG_SHUFFLE, HEADER_BYTES, Buffer, Codec, CodecHeader, CodecId, read_header
from tierd.codecs.raw import RawCodec
from tierd.codecs.zstd import DEFAULT_LEVEL, LEVELS, ZstdCodec
from tierd.errors import CodecError

__all__ = ["HEADER_BYTES", "SPECS", "Codec", "CodecError", "CodecHeader", "CodecId", "codec_for_blob",
           "get_codec", "read_header"]

#: The spec forms `get_codec` accepts, for messages and `--help` texts.
SPECS = ("raw", "zstd", "zstd:LEVEL", "zstd-shuffle", "zstd-shuffle:LEVEL", "int8k-tq3v", "int8k-tq4v")


def _bad(spec: object, why: str = "") -> CodecError:
    extra = f" ({why})" if why else ""
    return CodecError(f"codec {spec!r}{extra}: use one of {', '.join(SPECS)}; LEVEL is an integer in "
                      f"{LEVELS[0]}..-1 or 1..{LEVELS[-1]}")


if TYPE_CHECKING:
    import torch


def _quant(bits: int, device: Any) -> Codec:
    """The quantised codec, imported on first use: it needs torch, which costs seconds to import,
    and a daemon whose tiers are raw or zstd should not pay that at start."""
    from tierd.codecs.quant import QuantCodec

    return QuantCodec(bits=bits, device=device)


def get_codec(spec: str, *, device: "torch.device | str | None" = None) -> Codec:
    """The codec a spec names (a new instance; codecs are immutable and thread-safe).

    `device` applies to the quantised codecs only: "cuda" runs their torch ops on the GPU.
    """
    if not isinstance(spec, str):
        raise _bad(spec, "not a string")
    text = spec.strip().lower()
    if text == "raw":
        return RawCodec()
    if text in ("int8k-tq3v", "int8k-tq4v"):
        return _quant(int(text[8]), device)
    family, sep, level_text = text.partition(":")
    if family in ("zstd", "zstd-shuffle"):
        level = DEFAULT_LEVEL
        if sep:
            if not re.fullmatch(r"0|-?[1-9][0-9]{0,2}", level_text):
                raise _bad(spec, f"level {level_text!r} is not an integer")
            level = int(level_text)
            if level not in LEVELS:
                raise _bad(spec, f"level {level} is out of range")
        return ZstdCodec(level=level, shuffle=family == "zstd-shuffle")
    raise _bad(spec)


def codec_for_blob(blob: Buffer, *, device: "torch.device | str | None" = None) -> Codec:
    """The codec that can decode `blob`, from its header (e.g. a tier whose configured codec changed
    since the chunk was written). Raises CodecError for a blob without a valid header."""
    header = read_header(blob)
    if header.codec_id == CodecId.RAW:
        return RawCodec()
    if header.codec_id == CodecId.ZSTD:
        if header.level not in LEVELS:
            raise CodecError(f"zstd chunk level {header.level}: not a zstd level (corrupted header?)")
        return ZstdCodec(level=header.level, shuffle=bool(header.flags & FLAG_SHUFFLE))
    if header.codec_id == CodecId.INT8K_TQ:
        if header.bits not in (3, 4):
            raise CodecError(f"int8k-tq chunk bits: expected 3 or 4, found {header.bits}")
        return _quant(header.bits, device)
    raise CodecError(f"encoded chunk codec id {header.codec_id}: unknown to this tierd version "
                     f"(known: {', '.join(f'{c.value} {c.name.lower()}' for c in CodecId)})")
