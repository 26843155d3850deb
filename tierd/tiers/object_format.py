"""The object tier's object format: a small self-describing header, then the chunk payload.

Objects are content-addressed (the chunk key is the object's name), so they are immutable and
any node may read what any other node wrote. The header makes every object prove itself on
read — key, layout, size and an xxh3_64 checksum of the payload — and says which node wrote it
and when (`tierd inspect`). All integers little-endian::

      0  magic        8s   b"TIERDOB1"
      8  version      u16  1
     10  flags        u16  0 (reserved for codecs)
     12  layout_len   u16  length of layout_id (<= 32)
     14  ns_len       u16  namespace length in UTF-8 bytes (<= 256)
     16  node_len     u16  writer node id length in UTF-8 bytes (<= 64)
     18  (zero)       u16
     20  key          16s
     36  layout_id    32s  ASCII hex, zero padded
     68  payload_len  u64
     76  checksum     u64  xxh3_64 of the payload
     84  created      f64  unix time of the write
     92  namespace    256s UTF-8, zero padded
    348  node         64s  UTF-8, zero padded
    412  header_hash  u64  xxh3_64 of bytes [0, 412)
    420  zeros up to 512
    512  payload (payload_len bytes)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from tierd.errors import InvalidArgumentError

HEADER_BYTES = 512
MAGIC = b"TIERDOB1"
VERSION = 1
KEY_BYTES = 16
MAX_LAYOUT_ID = 32
MAX_NAMESPACE = 256
MAX_NODE = 64

_FIXED = struct.Struct("<8sHHHHHH16s32sQQd")
_NS_AT = _FIXED.size
_NODE_AT = _NS_AT + MAX_NAMESPACE
_HASH_AT = _NODE_AT + MAX_NODE
_HASH = struct.Struct("<Q")


class BadObject(Exception):
    """An object failed a check: it is a miss, never data. Internal to the object tier."""


@dataclass(frozen=True, slots=True)
class ObjectHeader:
    key: bytes
    layout_id: str
    namespace: str
    payload_len: int
    checksum: int
    created: float
    node: str

    @property
    def object_bytes(self) -> int:
        return HEADER_BYTES + self.payload_len


def object_path(key: bytes) -> str:
    """Where a chunk lives under the tier's prefix; the first byte spreads keys over 256 folders."""
    h = key.hex()
    return f"{h[:2]}/{h}.chunk"


def checksum(payload: memoryview | bytes) -> int:
    return xxhash.xxh3_64_intdigest(payload)


def pack_header(h: ObjectHeader) -> bytes:
    layout = h.layout_id.encode("ascii")
    ns = h.namespace.encode("utf-8")
    node = h.node.encode("utf-8")
    if len(h.key) != KEY_BYTES:
        raise InvalidArgumentError(f"chunk key {h.key!r}: must be {KEY_BYTES} bytes")
    if not layout or len(layout) > MAX_LAYOUT_ID:
        raise InvalidArgumentError(f"layout_id {h.layout_id!r}: 1 to {MAX_LAYOUT_ID} characters")
    if len(ns) > MAX_NAMESPACE:
        raise InvalidArgumentError(f"namespace {h.namespace!r}: at most {MAX_NAMESPACE} UTF-8 bytes")
    if len(node) > MAX_NODE:
        raise InvalidArgumentError(f"node id {h.node!r}: at most {MAX_NODE} UTF-8 bytes")
    buf = bytearray(HEADER_BYTES)
    _FIXED.pack_into(buf, 0, MAGIC, VERSION, 0, len(layout), len(ns), len(node), 0, h.key,
                     layout, h.payload_len, h.checksum, h.created)
    buf[_NS_AT:_NS_AT + len(ns)] = ns
    buf[_NODE_AT:_NODE_AT + len(node)] = node
    _HASH.pack_into(buf, _HASH_AT, xxhash.xxh3_64_intdigest(bytes(buf[:_HASH_AT])))
    return bytes(buf)


def parse_header(raw: bytes | memoryview) -> ObjectHeader:
    """The header of an object's first HEADER_BYTES; BadObject if anything is off."""
    raw = bytes(raw[:HEADER_BYTES])
    if len(raw) < HEADER_BYTES:
        raise BadObject(f"object shorter than its {HEADER_BYTES}-byte header ({len(raw)} bytes)")
    (magic, version, _flags, layout_len, ns_len, node_len, _zero, key, layout, payload_len, csum,
     created) = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC:
        raise BadObject("not a tierd chunk object (bad magic)")
    if version != VERSION:
        raise BadObject(f"object format version {version}; this tierd reads version {VERSION}")
    if _HASH.unpack_from(raw, _HASH_AT)[0] != xxhash.xxh3_64_intdigest(raw[:_HASH_AT]):
        raise BadObject("header checksum mismatch")
    if layout_len > MAX_LAYOUT_ID or ns_len > MAX_NAMESPACE or node_len > MAX_NODE:
        raise BadObject("header field lengths out of range")
    try:
        return ObjectHeader(
            key=key, layout_id=layout[:layout_len].decode("ascii"),
            namespace=raw[_NS_AT:_NS_AT + ns_len].decode("utf-8"), payload_len=payload_len,
            checksum=csum, created=created, node=raw[_NODE_AT:_NODE_AT + node_len].decode("utf-8"),
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
