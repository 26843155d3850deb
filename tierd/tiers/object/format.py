"""The object tier's object format: a small self-describing header, then the chunk payload.

Objects are content-addressed (the chunk key is the object's name), so they are immutable and
any node may read what any other node wrote. The header makes every object prove itself on
read — key, layout, size and an xxh3_64 checksum of the payload — and says which node wrote it
and when (`tierd inspect`). All integers little-endian (format version 2)::

      0  magic        8s   b"TIERDOB1"
      8  version      u16  2 (version 1 objects, written before codecs, are still read)
     10  flags        u16  0 (reserved)
     12  layout_len   u16  length of layout_id (<= 32)
     14  ns_len       u16  namespace length in UTF-8 bytes (<= 255 written, <= 256 read)
     16  node_len     u16  writer node id length in UTF-8 bytes (<= 64)
     18  (zero)       u16
     20  key          16s
     36  layout_id    32s  ASCII hex, zero padded
     68  payload_len  u64  bytes of the raw chunk
     76  checksum     u64  xxh3_64 of the stored bytes
     84  created      f64  unix time of the write
     92  stored_len   u64  bytes stored after the header (== payload_len when raw)
    100  codec        16s  codec spec of the stored bytes, "" when raw (tierd.codecs)
    116  namespace    256s UTF-8, zero padded
    372  node         64s  UTF-8, zero padded
    436  header_hash  u64  xxh3_64 of bytes [0, 436)
    444  zeros up to 512
    512  stored bytes (stored_len of them)

(Version 1 had no stored_len or codec: namespace at 92, node at 348, header_hash at 412.)

Version 3 is an encrypted object (`--encrypt-key-file`, `tierd.tiers.crypto`): flags = 1, the
fields of version 2 up to the node, then key_id 8s at 436 (which master key sealed it), the
AES-GCM nonce 12s at 444 and tag 16s at 456, header_hash at 472 of bytes [0, 472). The checksum
is of the stored (encrypted) bytes. Unencrypted objects are still written as version 2.

A namespace is written only within `tierd.keys.MAX_NAMESPACE_BYTES` (255), the one limit of
every entry point; the field stays 256 bytes wide and readers accept up to its width (objects
written when this format alone allowed 256 bytes are still read).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from tierd.tiers.header import MAX_LAYOUT_ID, MAX_NODE, NAMESPACE_FIELD, MediumHeader

HEADER_BYTES = 512
MAGIC = b"TIERDOB1"
VERSION = 2
VERSION_ENCRYPTED = 3
FLAG_ENCRYPTED = 1

_FIXED = struct.Struct("<8sHHHHHH16s32sQQdQ16s")
_FIXED_V1 = struct.Struct("<8sHHHHHH16s32sQQd")
_HASH = struct.Struct("<Q")
_CRYPTO = struct.Struct("<8s12s16s")  # key_id, nonce, tag (version 3)


def _offsets(fixed: struct.Struct, crypto: int = 0) -> tuple[int, int, int]:
    """(namespace, node, header hash) offsets after a fixed part of this size, with `crypto`
    bytes of encryption fields before the hash."""
    return fixed.size, fixed.size + NAMESPACE_FIELD, fixed.size + NAMESPACE_FIELD + MAX_NODE + crypto


_NS_AT, _NODE_AT, _HASH_AT = _offsets(_FIXED)
_CRYPTO_AT = _HASH_AT


class BadObject(Exception):
    """An object failed a check: it is a miss, never data. Internal to the object tier."""


@dataclass(frozen=True, slots=True)
class ObjectHeader(MediumHeader):
    """An object's header: the shared fields, with the writer's node id."""

    @property
    def medium_bytes(self) -> int:
        """The size of the object this header heads."""
        return HEADER_BYTES + self.stored


def object_path(key: bytes) -> str:
    """Where a chunk lives under the tier's prefix; the first byte spreads keys over 256 folders."""
    h = key.hex()
    return f"{h[:2]}/{h}.chunk"


def checksum(payload: memoryview | bytes) -> int:
    return xxhash.xxh3_64_intdigest(payload)


def pack_header(h: ObjectHeader) -> bytes:
    layout, ns, codec, node = h.encoded_fields()
    buf = bytearray(HEADER_BYTES)
    version, flags, hash_at = (VERSION_ENCRYPTED, FLAG_ENCRYPTED, _HASH_AT + _CRYPTO.size) if h.encrypted else \
        (VERSION, 0, _HASH_AT)
    _FIXED.pack_into(buf, 0, MAGIC, version, flags, len(layout), len(ns), len(node), 0, h.key,
                     layout, h.payload_len, h.checksum, h.created, h.stored, codec)
    buf[_NS_AT:_NS_AT + len(ns)] = ns
    buf[_NODE_AT:_NODE_AT + len(node)] = node
    if h.encrypted:
        _CRYPTO.pack_into(buf, _CRYPTO_AT, h.key_id, h.nonce, h.tag)
    _HASH.pack_into(buf, hash_at, xxhash.xxh3_64_intdigest(bytes(buf[:hash_at])))
    return bytes(buf)


def parse_header(raw: bytes | memoryview) -> ObjectHeader:
    """The header of an object's first HEADER_BYTES; BadObject if anything is off."""
    raw = bytes(raw[:HEADER_BYTES])
    if len(raw) < HEADER_BYTES:
        raise BadObject(f"object shorter than its {HEADER_BYTES}-byte header ({len(raw)} bytes)")
    (version,) = struct.unpack_from("<H", raw, 8)
    fixed = _FIXED_V1 if version == 1 else _FIXED
    ns_at, node_at, hash_at = _offsets(fixed, _CRYPTO.size if version == VERSION_ENCRYPTED else 0)
    fields = fixed.unpack_from(raw, 0)
    magic, version, flags, layout_len, ns_len, node_len, _zero, key, layout, payload_len, csum, created = fields[:12]
    stored_len, codec_raw = fields[12:] if version != 1 else (payload_len, b"")
    if magic != MAGIC:
        raise BadObject("not a tierd chunk object (bad magic)")
    if version not in (1, VERSION, VERSION_ENCRYPTED):
        raise BadObject(f"object format version {version}; this tierd reads versions 1 to {VERSION_ENCRYPTED}")
    if _HASH.unpack_from(raw, hash_at)[0] != xxhash.xxh3_64_intdigest(raw[:hash_at]):
        raise BadObject("header checksum mismatch")
    if version == VERSION_ENCRYPTED and flags != FLAG_ENCRYPTED:
        raise BadObject(f"version {version} object with flags {flags:#x}")
    key_id, nonce, tag = _CRYPTO.unpack_from(raw, _CRYPTO_AT) if version == VERSION_ENCRYPTED else (b"", b"", b"")
    if layout_len > MAX_LAYOUT_ID or ns_len > NAMESPACE_FIELD or node_len > MAX_NODE:
        raise BadObject("header field lengths out of range")
    if stored_len > payload_len or (not codec_raw.strip(b"\0") and stored_len != payload_len):
        raise BadObject(f"stored_len {stored_len} does not fit payload_len {payload_len}")
    try:
        return ObjectHeader(
            key=key, layout_id=layout[:layout_len].decode("ascii"),
            namespace=raw[ns_at:ns_at + ns_len].decode("utf-8"), payload_len=payload_len,
            checksum=csum, created=created, node=raw[node_at:node_at + node_len].decode("utf-8"),
            stored_len=stored_len, codec=codec_raw.rstrip(b"\0").decode("ascii"),
            key_id=key_id, nonce=nonce, tag=tag,
        )
    except UnicodeDecodeError as exc:
        raise BadObject(f"header text is not valid UTF-8: {exc}") from None


def check_header(h: ObjectHeader, key: bytes, layout_id: str | None, payload_len: int | None) -> None:
    """BadObject unless the header is the one the reader expects (an object under the wrong
    name, or of another layout or size, is never served)."""
    if h.key != key:
        raise BadObject(f"object under {key.hex()} holds key {h.key.hex()}")
    if layout_id is not None and h.layout_id != layout_id:
        raise BadObject(f"object {key.hex()} has layout {h.layout_id}, expected {layout_id}")
    if payload_len is not None and h.payload_len != payload_len:
        raise BadObject(f"object {key.hex()} holds {h.payload_len} payload bytes, expected {payload_len}")
