"""The NVMe tier's chunk file format: where a chunk's file lives, and its header, byte by byte.

On-disk layout (all integers little-endian)::

    DIR/<first key byte, 2 hex digits>/<key, 32 hex digits>.chunk

    offset 0     header block, 4096 bytes (format version 2):
                   0  magic        8s   b"TIERDCK1"
                   8  version      u16  2 (version 1 files, written before codecs, are still read)
                  10  flags        u16  0 (reserved)
                  12  layout_len   u16  length of layout_id (<= 32)
                  14  ns_len       u16  length of namespace in UTF-8 bytes (<= 255 written)
                  16  key          16s
                  32  layout_id    32s  ASCII hex, zero padded
                  64  payload_len  u64  bytes of the raw chunk (what a read returns)
                  72  checksum     u64  xxh3_64 of the stored bytes
                  80  created      f64  unix time
                  88  stored_len   u64  bytes stored after the header (== payload_len when raw)
                  96  codec        16s  codec spec of the stored bytes, "" when raw (tierd.codecs)
                 112  namespace    256s UTF-8, zero padded (a field of 256 bytes; see below)
                 368  header_hash  u64  xxh3_64 of bytes [0, 368) -- detects a torn/flipped header
                 376  zeros up to 4096
    offset 4096  stored bytes, then zeros up to the next multiple of 4096

    (version 1: the same fields up to `created`, no stored_len or codec, namespace at 88 and
    header_hash at 344.)

    version 3, an encrypted chunk (`--encrypt-key-file`, `tierd.tiers.crypto`): flags = 1, the
    fields of version 2 up to the namespace, then
                 368  key_id       8s   which master key sealed it
                 376  nonce        12s  AES-GCM nonce, random per write
                 388  tag          16s  AES-GCM tag over the stored bytes and the naming fields
                 404  header_hash  u64  xxh3_64 of bytes [0, 404)
    The checksum is of the stored (encrypted) bytes, so damage is told from tampering without
    the key. Unencrypted chunks are still written as version 2.

A namespace is written only if it is within `tierd.keys.MAX_NAMESPACE_BYTES` (255), the one
limit of every entry point, so any namespace the store accepts can be written down. The field
stays 256 bytes wide, and a reader accepts up to the field's width: files written before the
limit was shared (when this format alone allowed 256 bytes) are still read.

Every file is therefore `4096 + round_up(stored_len, 4096)` bytes, in both I/O modes, so
O_DIRECT can write and read it in whole aligned blocks; `file_size(payload_len)` is exact
for a raw chunk and an upper bound for an encoded one (a tier never stores more than the raw
chunk), so capacity can be reserved before anything is written.

Nothing here touches a file: `tierd.tiers.nvme.files` does the I/O.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import xxhash

from tierd.errors import TierdError
from tierd.tiers.base import StoredRecord
from tierd.tiers.header import KEY_BYTES, MAX_LAYOUT_ID, NAMESPACE_FIELD, MediumHeader

#: Alignment of every block on disk and of every buffer handed to O_DIRECT I/O.
BLOCK = 4096
HEADER_BYTES = BLOCK
MAGIC = b"TIERDCK1"
VERSION = 2
VERSION_ENCRYPTED = 3
FLAG_ENCRYPTED = 1
CHUNK_SUFFIX = ".chunk"
TEMP_SUFFIX = ".tmp"

_FIXED_V1 = struct.Struct("<8sHHHH16s32sQQd")  # 88 bytes, see module docstring
_FIXED = struct.Struct("<8sHHHH16s32sQQdQ16s")  # 112 bytes
_NS_OFFSET = _FIXED.size
_HASH_OFFSET = _NS_OFFSET + NAMESPACE_FIELD
_HASH_OFFSET_V1 = _FIXED_V1.size + NAMESPACE_FIELD
_HASH = struct.Struct("<Q")
_CRYPTO = struct.Struct("<8s12s16s")  # key_id, nonce, tag (version 3)
_HASH_OFFSET_V3 = _HASH_OFFSET + _CRYPTO.size
_HEADER_USED = _HASH_OFFSET_V3 + _HASH.size


def round_up(n: int, to: int = BLOCK) -> int:
    return (n + to - 1) // to * to


def file_size(stored_len: int) -> int:
    """Exact st_size of a chunk file holding `stored_len` bytes after its header."""
    return HEADER_BYTES + round_up(stored_len)


#: The shard directories: a key's file lives in the one named by its first byte.
SHARDS: tuple[str, ...] = tuple(f"{i:02x}" for i in range(256))


def shard_of(key: bytes) -> str:
    """The shard directory of a key: its first byte, two lowercase hex digits."""
    return SHARDS[key[0]]


def file_name(key: bytes) -> str:
    return f"{key.hex()}{CHUNK_SUFFIX}"


# The names of tierd's own files, matched exactly by the start-up scan: it deletes only files
# named so (a user's `notes.tmp` or `x.chunk` in the directory is left alone).
_KEY_HEX = f"[0-9a-f]{{{2 * KEY_BYTES}}}"
_CHUNK_NAME = re.compile(f"({_KEY_HEX}){re.escape(CHUNK_SUFFIX)}")
_WRITE_TEMP_NAME = re.compile(rf"\.({_KEY_HEX})\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")
_PROBE_TEMP_NAME = re.compile(rf"\.probe-[0-9]+-[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")


def write_temp_name(key: bytes, nonce: bytes) -> str:
    """The temp file a write of `key` goes through, in the key's shard: `.<key>.<nonce>.tmp`."""
    return f".{key.hex()}.{nonce.hex()}{TEMP_SUFFIX}"


def probe_temp_name(pid: int, nonce: bytes) -> str:
    """The O_DIRECT probe's temp file, in the root directory: `.probe-<pid>-<nonce>.tmp`."""
    return f".probe-{pid}-{nonce.hex()}{TEMP_SUFFIX}"


def is_chunk_name(name: str, shard: str) -> bool:
    """Whether `name` in shard directory `shard` is exactly what `file_name` gives a key of that shard."""
    m = _CHUNK_NAME.fullmatch(name)
    return m is not None and m[1][:2] == shard


def is_write_temp_name(name: str, shard: str) -> bool:
    """Whether `name` in `shard` is exactly a `write_temp_name` (4-byte nonce) of a key of that shard."""
    m = _WRITE_TEMP_NAME.fullmatch(name)
    return m is not None and m[1][:2] == shard


def is_probe_temp_name(name: str) -> bool:
    """Whether `name` in the root directory is exactly a `probe_temp_name` (4-byte nonce)."""
    return _PROBE_TEMP_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class ChunkHeader(MediumHeader):
    """What a chunk file says about itself; everything needed to index it without the payload."""

    @property
    def medium_bytes(self) -> int:
        """The size of the file this header heads."""
        return file_size(self.stored)


@dataclass(frozen=True, slots=True)
class StoredChunk(StoredRecord):
    """A chunk file found by `scan`: the `LowerTier` record plus the payload checksum.

    Being a `StoredRecord`, it is what the store's `LowerTier.scan` contract expects;
    `file_bytes` (== `stored_bytes`, the file's st_size) and `header` are the same facts seen
    from the file's side.
    """

    checksum: int
    stored_len: int = -1
    codec: str = ""

    @property
    def file_bytes(self) -> int:
        return self.stored_bytes

    @property
    def header(self) -> ChunkHeader:
        return ChunkHeader(self.key, self.layout_id, self.namespace, self.payload_len, self.checksum, self.created,
                           self.stored_len, self.codec)

    @classmethod
    def from_header(cls, header: ChunkHeader, file_bytes: int, mtime: float) -> "StoredChunk":
        return cls(
            key=header.key, layout_id=header.layout_id, namespace=header.namespace,
            payload_len=header.payload_len, stored_bytes=file_bytes, created=header.created,
            mtime=mtime, checksum=header.checksum, stored_len=header.stored, codec=header.codec,
        )


class CorruptChunk(TierdError):
    """A chunk file failed a check. Never leaves the NVMe tier: the chunk becomes a miss."""


def encode_header(header: ChunkHeader, into: memoryview) -> None:
    """Write `header` as the 4096-byte header block into `into` (zeroing the rest of it)."""
    layout, ns, codec, _node = header.encoded_fields()
    into[:HEADER_BYTES] = bytes(HEADER_BYTES)
    version, flags, hash_at = (VERSION_ENCRYPTED, FLAG_ENCRYPTED, _HASH_OFFSET_V3) if header.encrypted else \
        (VERSION, 0, _HASH_OFFSET)
    _FIXED.pack_into(
        into, 0, MAGIC, version, flags, len(layout), len(ns), header.key, layout,
        header.payload_len, header.checksum, header.created, header.stored, codec,
    )
    into[_NS_OFFSET : _NS_OFFSET + len(ns)] = ns
    if header.encrypted:
        _CRYPTO.pack_into(into, _HASH_OFFSET, header.key_id, header.nonce, header.tag)
    _HASH.pack_into(into, hash_at, xxhash.xxh3_64_intdigest(into[:hash_at]))


def decode_header(block: memoryview | bytes) -> ChunkHeader:
    """Parse and verify a header block; raises `CorruptChunk` on any damage."""
    if len(block) < _HEADER_USED:
        raise CorruptChunk(f"header is {len(block)} bytes, shorter than {_HEADER_USED}")
    block = memoryview(block)
    (version,) = struct.unpack_from("<H", block, 8)
    fixed, ns_at, hash_at = {VERSION: (_FIXED, _NS_OFFSET, _HASH_OFFSET),
                             VERSION_ENCRYPTED: (_FIXED, _NS_OFFSET, _HASH_OFFSET_V3)}.get(
        version, (_FIXED_V1, _FIXED_V1.size, _HASH_OFFSET_V1))
    (stored_hash,) = _HASH.unpack_from(block, hash_at)
    if xxhash.xxh3_64_intdigest(block[:hash_at]) != stored_hash:
        raise CorruptChunk("header hash mismatch (torn or flipped header)")
    fields = fixed.unpack_from(block, 0)
    magic, version, flags, layout_len, ns_len, key, layout, payload_len, checksum, created = fields[:10]
    stored_len, codec_raw = fields[10:] if version != 1 else (payload_len, b"")
    if magic != MAGIC:
        raise CorruptChunk(f"bad magic {magic!r}")
    expected_flags = FLAG_ENCRYPTED if version == VERSION_ENCRYPTED else 0
    if version not in (1, VERSION, VERSION_ENCRYPTED) or flags != expected_flags:
        raise CorruptChunk(f"unsupported version {version} / flags {flags:#x}")
    key_id, nonce, tag = _CRYPTO.unpack_from(block, _HASH_OFFSET) if version == VERSION_ENCRYPTED else (b"", b"", b"")
    if not 0 < layout_len <= MAX_LAYOUT_ID or ns_len > NAMESPACE_FIELD:
        raise CorruptChunk(f"field lengths out of range (layout {layout_len}, namespace {ns_len})")
    if stored_len > payload_len or (not codec_raw.strip(b"\0") and stored_len != payload_len):
        raise CorruptChunk(f"stored_len {stored_len} does not fit payload_len {payload_len}")
    try:
        layout_id = layout[:layout_len].decode("ascii")
        namespace = bytes(block[ns_at : ns_at + ns_len]).decode("utf-8")
        codec = codec_raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptChunk(f"undecodable header text: {exc}") from None
    return ChunkHeader(key, layout_id, namespace, payload_len, checksum, created, stored_len, codec,
                       key_id=key_id, nonce=nonce, tag=tag)
