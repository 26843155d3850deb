"""The NVMe tier's on-disk chunk store: one checksummed file per chunk in a local directory.

`NvmeChunkFiles` only moves bytes between arena slots and files and proves them intact; the
index, LRU order and capacity accounting live in `tierd.store`, which calls these BLOCKING
methods from a thread pool. Methods are thread-safe for different keys; the store never runs
two methods on the same key at once, so per-key locking is not needed here.

On-disk layout (all integers little-endian)::

    DIR/<first key byte, 2 hex digits>/<key, 32 hex digits>.chunk

    offset 0     header block, 4096 bytes (format version 2):
                   0  magic        8s   b"TIERDCK1"
                   8  version      u16  2 (version 1 files, written before codecs, are still read)
                  10  flags        u16  0 (reserved)
                  12  layout_len   u16  length of layout_id (<= 32)
                  14  ns_len       u16  length of namespace in UTF-8 bytes (<= 256)
                  16  key          16s
                  32  layout_id    32s  ASCII hex, zero padded
                  64  payload_len  u64  bytes of the raw chunk (what a read returns)
                  72  checksum     u64  xxh3_64 of the stored bytes
                  80  created      f64  unix time
                  88  stored_len   u64  bytes stored after the header (== payload_len when raw)
                  96  codec        16s  codec spec of the stored bytes, "" when raw (tierd.codecs)
                 112  namespace    256s UTF-8, zero padded
                 368  header_hash  u64  xxh3_64 of bytes [0, 368) -- detects a torn/flipped header
                 376  zeros up to 4096
    offset 4096  stored bytes, then zeros up to the next multiple of 4096

    (version 1: the same fields up to `created`, no stored_len or codec, namespace at 88 and
    header_hash at 344.)

A tier with a codec (`tierd.tiers.encoding`) stores a codec blob instead of the raw chunk when
that is smaller; a read decodes it into the destination. Every file is therefore `4096 + round_up(stored_len, 4096)` bytes, in both I/O modes, so
O_DIRECT can write and read it in whole aligned blocks; `file_bytes_for(payload_len)` is exact
for a raw chunk and an upper bound for an encoded one (a tier never stores more than the raw
chunk), so capacity can be reserved before anything is written.

Durability: a chunk is written to a temp file in its shard directory, fdatasync'ed, renamed
over its final name and the directory is fsync'ed; a crash leaves either the old state plus a
`.tmp` file (removed by `scan`) or the complete new file, never a torn `.chunk`.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import string
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import xxhash

from tierd.errors import CapacityError, CodecError, ConfigError, InvalidArgumentError, TierdError, UnknownLayoutError
from tierd.tiers.base import StoredRecord
from tierd.tiers.encoding import TierCodec

log = logging.getLogger(__name__)

#: Alignment of every block on disk and of every buffer handed to O_DIRECT I/O.
BLOCK = 4096
HEADER_BYTES = BLOCK
MAGIC = b"TIERDCK1"
VERSION = 2
KEY_BYTES = 16
MAX_LAYOUT_ID = 32
MAX_NAMESPACE_BYTES = 256
CHUNK_SUFFIX = ".chunk"
TEMP_SUFFIX = ".tmp"

_FIXED_V1 = struct.Struct("<8sHHHH16s32sQQd")  # 88 bytes, see module docstring
_FIXED = struct.Struct("<8sHHHH16s32sQQdQ16s")  # 112 bytes
_NS_OFFSET = _FIXED.size
_HASH_OFFSET = _NS_OFFSET + MAX_NAMESPACE_BYTES
_HASH_OFFSET_V1 = _FIXED_V1.size + MAX_NAMESPACE_BYTES
_HASH = struct.Struct("<Q")
_HEADER_USED = _HASH_OFFSET + _HASH.size
_HEX = frozenset(string.hexdigits)
#: Size of the aligned bounce buffer used when a payload or destination is not page-aligned.
_BOUNCE_BYTES = 4 * 1024 * 1024
#: Errors that say the system is short of a resource, not that the file is bad: a miss, keep the file.
_TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


def _round_up(n: int, to: int = BLOCK) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """What a chunk file says about itself; everything needed to index it without the payload."""

    key: bytes
    layout_id: str
    namespace: str
    payload_len: int
    checksum: int
    created: float
    stored_len: int = -1  # -1: the raw chunk (== payload_len)
    codec: str = ""

    @property
    def stored(self) -> int:
        """Bytes after the header block (before padding)."""
        return self.payload_len if self.stored_len < 0 else self.stored_len


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


class _CorruptChunk(TierdError):
    """Internal: a chunk file failed a check. Never escapes this module; the chunk becomes a miss."""


def _check_key(key: bytes) -> bytes:
    if isinstance(key, bytearray):
        key = bytes(key)
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidArgumentError(f"chunk key {key!r}: must be {KEY_BYTES} bytes (a tierd.keys chunk key)")
    return key


def _check_layout_id(layout_id: str) -> bytes:
    if (
        not isinstance(layout_id, str)
        or not layout_id
        or len(layout_id) > MAX_LAYOUT_ID
        or not set(layout_id) <= _HEX
    ):
        raise InvalidArgumentError(
            f"layout_id {layout_id!r}: must be a non-empty hex string of at most {MAX_LAYOUT_ID} characters"
        )
    return layout_id.encode("ascii")


def _check_namespace(namespace: str) -> bytes:
    if not isinstance(namespace, str):
        raise InvalidArgumentError(f"namespace {namespace!r}: must be a string")
    raw = namespace.encode("utf-8")
    if len(raw) > MAX_NAMESPACE_BYTES:
        raise InvalidArgumentError(
            f"namespace {namespace[:40]!r}... is {len(raw)} bytes in UTF-8: "
            f"use a namespace of at most {MAX_NAMESPACE_BYTES} bytes"
        )
    return raw


def _byte_view(buf: memoryview | bytes | bytearray, *, writable: bool, what: str) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer, without copying it."""
    try:
        view = memoryview(buf)
    except TypeError:
        raise InvalidArgumentError(f"{what} {type(buf).__name__}: must support the buffer protocol") from None
    if writable and view.readonly:
        raise InvalidArgumentError(f"{what}: must be a writable buffer (an arena slot), got a read-only one")
    if not view.c_contiguous:
        raise InvalidArgumentError(f"{what}: must be a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _address(view: memoryview) -> int:
    """Start address of a buffer; O_DIRECT needs it aligned. numpy reads it for read-only buffers too."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def _is_aligned(view: memoryview) -> bool:
    return len(view) == 0 or _address(view) % BLOCK == 0


def encode_header(header: ChunkHeader, into: memoryview) -> None:
    """Write `header` as the 4096-byte header block into `into` (zeroing the rest of it)."""
    layout = _check_layout_id(header.layout_id)
    ns = _check_namespace(header.namespace)
    codec = header.codec.encode("ascii")
    into[:HEADER_BYTES] = bytes(HEADER_BYTES)
    _FIXED.pack_into(
        into, 0, MAGIC, VERSION, 0, len(layout), len(ns), header.key, layout,
        header.payload_len, header.checksum, header.created, header.stored, codec,
    )
    into[_NS_OFFSET : _NS_OFFSET + len(ns)] = ns
    _HASH.pack_into(into, _HASH_OFFSET, xxhash.xxh3_64_intdigest(into[:_HASH_OFFSET]))


def decode_header(block: memoryview | bytes) -> ChunkHeader:
    """Parse and verify a header block; raises `_CorruptChunk` (module-internal) on any damage."""
    if len(block) < _HEADER_USED:
        raise _CorruptChunk(f"header is {len(block)} bytes, shorter than {_HEADER_USED}")
    block = memoryview(block)
    (version,) = struct.unpack_from("<H", block, 8)
    fixed, ns_at, hash_at = (_FIXED, _NS_OFFSET, _HASH_OFFSET) if version == VERSION else \
        (_FIXED_V1, _FIXED_V1.size, _HASH_OFFSET_V1)
    (stored_hash,) = _HASH.unpack_from(block, hash_at)
    if xxhash.xxh3_64_intdigest(block[:hash_at]) != stored_hash:
        raise _CorruptChunk("header hash mismatch (torn or flipped header)")
    fields = fixed.unpack_from(block, 0)
    magic, version, flags, layout_len, ns_len, key, layout, payload_len, checksum, created = fields[:10]
    stored_len, codec_raw = fields[10:] if version == VERSION else (payload_len, b"")
    if magic != MAGIC:
        raise _CorruptChunk(f"bad magic {magic!r}")
    if version not in (1, VERSION) or flags != 0:
        raise _CorruptChunk(f"unsupported version {version} / flags {flags:#x}")
    if not 0 < layout_len <= MAX_LAYOUT_ID or ns_len > MAX_NAMESPACE_BYTES:
        raise _CorruptChunk(f"field lengths out of range (layout {layout_len}, namespace {ns_len})")
    if stored_len > payload_len or (not codec_raw.strip(b"\0") and stored_len != payload_len):
        raise _CorruptChunk(f"stored_len {stored_len} does not fit payload_len {payload_len}")
    try:
        layout_id = layout[:layout_len].decode("ascii")
        namespace = bytes(block[ns_at : ns_at + ns_len]).decode("utf-8")
        codec = codec_raw.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise _CorruptChunk(f"undecodable header text: {exc}") from None
    return ChunkHeader(key, layout_id, namespace, payload_len, checksum, created, stored_len, codec)


def _transfer_all(
    op: Callable[[int, Sequence[memoryview], int], int], fd: int, bufs: list[memoryview], offset: int
) -> None:
    """Run preadv/pwritev until every buffer is done; short transfers (>2 GiB, signals) resume."""
    bufs = [b for b in bufs if len(b)]
    while bufs:
        done = op(fd, bufs, offset)
        if done <= 0:  # EOF on read; a write that makes no progress
            raise OSError(errno.EIO, f"transfer stopped at offset {offset} with {sum(map(len, bufs))} bytes left")
        offset += done
        while bufs and done >= len(bufs[0]):
            done -= len(bufs[0])
            bufs.pop(0)
        if done:
            bufs[0] = bufs[0][done:]


class _ThreadBuffers(threading.local):
    """Per-thread page-aligned scratch: header + tail block, and a bounce buffer made on demand."""

    def __init__(self) -> None:
        self.small = mmap.mmap(-1, 2 * BLOCK)
        self.small_view = memoryview(self.small)
        self.bounce_view: memoryview | None = None
        self.scratch_view: memoryview | None = None

    def bounce(self) -> memoryview:
        if self.bounce_view is None:
            self.bounce_view = memoryview(mmap.mmap(-1, _BOUNCE_BYTES))
        return self.bounce_view

    def scratch(self, nbytes: int) -> memoryview:
        """A page-aligned buffer of at least `nbytes` (an encoded chunk on its way to the decoder)."""
        if self.scratch_view is None or len(self.scratch_view) < nbytes:
            self.scratch_view = memoryview(mmap.mmap(-1, _round_up(max(nbytes, BLOCK))))
        return self.scratch_view


class NvmeChunkFiles:
    """One file per chunk under `directory`, written crash-safely and verified on every read.

    Implements `tierd.tiers.base.LowerTier`.

    Contract with the caller (`tierd.store`): every method BLOCKS on disk I/O and is called from
    a worker thread; calls for different keys may run concurrently, calls for the same key never
    do. A read returns True only for bytes that match the header's key, layout, length and the
    payload checksum; anything else deletes the file and is a miss (`corrupt` counts them).

    `codec`: what this tier writes (a `tierd.codecs` spec or a `TierCodec`; "raw" by default).
    Reads decode whatever codec a file's header names.

    `direct_io`: None probes O_DIRECT on the directory's filesystem and uses it where it works
    (durable writes run several times faster than buffered writes + fdatasync on the machines
    measured by `bench/nvme_tier.py`, and chunk bytes do not crowd the page cache that the DRAM
    tier needs); True insists (ConfigError if unsupported); False forces buffered I/O.
    """

    name = "nvme"

    def __init__(self, directory: str | Path, *, direct_io: bool | None = None,
                 codec: str | TierCodec = "raw") -> None:
        self.codec = codec if isinstance(codec, TierCodec) else TierCodec(codec)
        self.root = Path(directory)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for i in range(256):  # all shard dirs up front: no mkdir races, one directory fsync
                (self.root / f"{i:02x}").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"NVMe tier directory {str(self.root)!r}: cannot create it ({exc}); "
                              "give a writable directory") from None
        self._fsync_dir(self.root)
        supported = self._probe_direct_io()
        if direct_io is True and not supported:
            raise ConfigError(f"NVMe tier directory {str(self.root)!r}: its filesystem does not support "
                              "O_DIRECT; use direct_io=None (auto) or False")
        self.direct_io: bool = supported if direct_io is None else bool(direct_io)
        self._buffers = _ThreadBuffers()
        self._counter_lock = threading.Lock()
        #: Files removed by `scan` because their header or size was bad.
        self.dropped = 0
        #: Files removed by `read_into` because a check failed or the read failed.
        self.corrupt = 0
        #: Leftover temp files (interrupted writes) removed by `scan`.
        self.temp_removed = 0
        #: Chunk files the running (or last) `scan` has read so far, for progress lines.
        self.scanned = 0
        log.info("NVMe chunk files in %s (O_DIRECT %s)", self.root, "on" if self.direct_io else "off")

    # -- layout ---------------------------------------------------------------------------

    def path_for(self, key: bytes) -> Path:
        key = _check_key(key)
        return self.root / f"{key[0]:02x}" / f"{key.hex()}{CHUNK_SUFFIX}"

    @staticmethod
    def file_bytes_for(payload_len: int) -> int:
        """Exact st_size of the file for a payload of this length, for accounting before writing."""
        if not isinstance(payload_len, int) or isinstance(payload_len, bool) or payload_len < 0:
            raise InvalidArgumentError(f"payload_len {payload_len!r}: must be a non-negative integer")
        return HEADER_BYTES + _round_up(payload_len)

    def stored_bytes(self, payload_len: int) -> int:
        """`LowerTier` name of `file_bytes_for`."""
        return self.file_bytes_for(payload_len)

    # -- write ----------------------------------------------------------------------------

    def write(
        self,
        key: bytes,
        layout_id: str,
        namespace: str,
        payload: memoryview | bytes | bytearray,
        *,
        created: float | None = None,
    ) -> int:
        """Store `payload` under `key` durably, replacing any existing file of that key.

        Returns the file's size: `file_bytes_for(len(payload))` for a raw chunk, less for one the
        tier's codec made smaller (encoding runs here, on the calling I/O thread). With O_DIRECT an aligned payload goes to disk straight from its buffer in one syscall
        (header block, aligned body, zero-padded tail block). Raises CapacityError when the disk
        is full and TierdError on other I/O errors; either way no file of this write remains.
        """
        key = _check_key(key)
        _check_layout_id(layout_id)
        _check_namespace(namespace)
        view = _byte_view(payload, writable=False, what=f"payload for key {key.hex()}")
        raw_len = len(view)
        stored, codec = self.codec.encode(view, layout_id)
        view = memoryview(stored).cast("B")
        n = len(view)
        header = ChunkHeader(
            key=key,
            layout_id=layout_id,
            namespace=namespace,
            payload_len=raw_len,
            checksum=xxhash.xxh3_64_intdigest(view),
            created=time.time() if created is None else float(created),
            stored_len=n,
            codec=codec,
        )
        final = self.path_for(key)
        tmp = final.with_name(f".{key.hex()}.{os.urandom(4).hex()}{TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_DIRECT if self.direct_io else 0)
        renamed = False
        try:
            fd = os.open(tmp, flags, 0o600)
            try:
                self._write_file(fd, header, view)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            renamed = True
            self._fsync_dir(final.parent)
        except BaseException as exc:
            # A failed write leaves nothing behind, not even a renamed but unsynced file, so
            # the store's accounting (which will not count this chunk) stays true.
            try:
                os.unlink(final if renamed else tmp)
            except OSError:
                pass
            if not isinstance(exc, OSError):
                raise
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CapacityError(f"NVMe tier {str(self.root)!r} is out of disk space writing chunk "
                                    f"{key.hex()} ({n} bytes): lower the NVMe capacity below the free space") from None
            raise TierdError(f"writing chunk {key.hex()} to {str(final)!r} failed: {exc}") from exc
        return self.file_bytes_for(n)

    def _write_file(self, fd: int, header: ChunkHeader, view: memoryview) -> None:
        bufs = self._buffers
        head = bufs.small_view[:BLOCK]
        encode_header(header, head)
        n = len(view)
        if not self.direct_io:
            pad = _round_up(n) - n
            _transfer_all(os.pwritev, fd, [head, view, memoryview(bytes(pad))], 0)
            return
        body = n - n % BLOCK
        if _is_aligned(view):
            iov = [head, view[:body]]
            if body < n:
                tail = bufs.small_view[BLOCK:]
                tail[: n - body] = view[body:]
                tail[n - body :] = bytes(BLOCK - (n - body))
                iov.append(tail)
            _transfer_all(os.pwritev, fd, iov, 0)
            return
        # Unaligned source (not an arena slot): copy through an aligned bounce buffer.
        _transfer_all(os.pwritev, fd, [head], 0)
        bounce = bufs.bounce()
        done = 0
        while done < n:
            m = min(len(bounce), n - done)
            padded = _round_up(m)
            bounce[:m] = view[done : done + m]
            bounce[m:padded] = bytes(padded - m)
            _transfer_all(os.pwritev, fd, [bounce[:padded]], HEADER_BYTES + done)
            done += m

    # -- read -----------------------------------------------------------------------------

    def read_into(
        self, key: bytes, dest: memoryview | bytearray, *, layout_id: str, payload_len: int,
        stored_bytes: int | None = None,
    ) -> bool:
        """Fill `dest[:payload_len]` with the chunk's raw payload; True only if every check passed.

        Checks: file size, header hash, key, layout id, payload length, the checksum of the
        stored bytes and, for an encoded chunk, the codec's own checks while decoding. On any
        failure or I/O error the file is deleted, counted in `corrupt` and False is returned
        (the caller treats it as a miss; `dest` may then hold partial bytes). A missing file is a
        plain False, and so is an encoded chunk of a layout not registered in this daemon (kept).
        A raw chunk with O_DIRECT and an aligned `dest` arrives, header and payload, in one
        preadv straight into `dest`; an encoded one is read into a scratch buffer and decoded
        into `dest` on this thread. (`stored_bytes` is the LowerTier hint; the file's own size
        is used instead.)
        """
        key = _check_key(key)
        _check_layout_id(layout_id)
        view = _byte_view(dest, writable=True, what=f"destination for key {key.hex()}")
        if not isinstance(payload_len, int) or not 0 <= payload_len <= len(view):
            raise InvalidArgumentError(f"payload_len {payload_len!r} for key {key.hex()}: must be between 0 and "
                                       f"the destination size {len(view)}")
        view = view[:payload_len]
        path = self.path_for(key)
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if self.direct_io else 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in _TRANSIENT_ERRNOS:
                log.warning("chunk %s: cannot open %s now (%s); treating as a miss", key.hex(), path, exc)
                return False
            return self._reject(path, key, f"open failed: {exc}")
        try:
            size = os.fstat(fd).st_size
            if size == self.file_bytes_for(payload_len):  # raw, or encoded to the same rounded size
                header = decode_header(self._read_file(fd, view))
                stored = view
            else:  # encoded (smaller), or damaged: the header says which
                header = decode_header(self._read_header_block(fd))
                stored = None
            if header.key != key:
                raise _CorruptChunk(f"header key {header.key.hex()} does not match")
            if header.layout_id != layout_id:
                raise _CorruptChunk(f"header layout {header.layout_id!r}, requested {layout_id!r}")
            if header.payload_len != payload_len:
                raise _CorruptChunk(f"header payload_len {header.payload_len}, requested {payload_len}")
            expected = HEADER_BYTES + _round_up(header.stored)
            if size != expected:
                raise _CorruptChunk(f"file is {size} bytes, expected {expected} for stored_len {header.stored}")
            if header.codec:
                blob = self._buffers.scratch(header.stored)[: header.stored]
                if stored is None:
                    self._read_stored(fd, blob)
                else:
                    blob[:] = stored[: header.stored]
                stored = blob
            assert stored is not None
            if xxhash.xxh3_64_intdigest(stored) != header.checksum:
                raise _CorruptChunk("checksum mismatch of the stored bytes")
            if header.codec:
                self.codec.decode_into(stored, header.codec, layout_id, view)
        except UnknownLayoutError as exc:
            log.warning("chunk %s: %s; a miss for now, the file is kept", key.hex(), exc)
            return False
        except (_CorruptChunk, CodecError) as exc:
            return self._reject(path, key, str(exc))
        except OSError as exc:
            return self._reject(path, key, f"read failed: {exc}")
        finally:
            os.close(fd)
        return True

    def read_header(self, key: bytes) -> ChunkHeader | None:
        """The verified header of the chunk's file (its codec and stored size, for `inspect`), or
        None if there is no file or its header is damaged (the next read deletes it)."""
        path = self.path_for(key)
        try:
            with open(path, "rb", buffering=0) as f:
                header = decode_header(f.read(HEADER_BYTES))
        except (OSError, _CorruptChunk):
            return None
        return header if header.key == key else None

    def _read_header_block(self, fd: int) -> memoryview:
        head = self._buffers.small_view[:BLOCK]
        _transfer_all(os.preadv, fd, [head], 0)
        return head

    def _read_stored(self, fd: int, blob: memoryview) -> None:
        """Read the stored bytes after the header into `blob`, a prefix of the aligned scratch."""
        whole = self._buffers.scratch(len(blob))[: _round_up(len(blob))]
        _transfer_all(os.preadv, fd, [whole], HEADER_BYTES)

    def _read_file(self, fd: int, view: memoryview) -> memoryview:
        """Read header and payload (into `view`); returns the header block."""
        bufs = self._buffers
        head = bufs.small_view[:BLOCK]
        n = len(view)
        if not self.direct_io:
            _transfer_all(os.preadv, fd, [head, view], 0)
            return head
        body = n - n % BLOCK
        if _is_aligned(view):
            iov = [head, view[:body]]
            tail = bufs.small_view[BLOCK:]
            if body < n:
                iov.append(tail)
            _transfer_all(os.preadv, fd, iov, 0)
            if body < n:
                view[body:] = tail[: n - body]
            return head
        _transfer_all(os.preadv, fd, [head], 0)
        bounce = bufs.bounce()
        done = 0
        while done < n:
            m = min(len(bounce), n - done)
            _transfer_all(os.preadv, fd, [bounce[: _round_up(m)]], HEADER_BYTES + done)
            view[done : done + m] = bounce[:m]
            done += m
        return head

    def _reject(self, path: Path, key: bytes, reason: str) -> bool:
        with self._counter_lock:
            self.corrupt += 1
        log.warning("chunk %s in %s is unusable (%s): deleted, serving a miss", key.hex(), path, reason)
        try:
            os.unlink(path)
        except OSError:
            pass
        return False

    # -- delete / scan --------------------------------------------------------------------

    def delete(self, key: bytes) -> int:
        """Remove the chunk's file; returns the bytes freed (0 if there was none).

        The directory is not fsync'ed: if a crash undoes a delete, the chunk simply reappears
        intact at the next `scan`, which is harmless.
        """
        path = self.path_for(key)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return size

    def scan(self) -> list[StoredChunk]:
        """Every intact-looking chunk on disk, oldest mtime first, to rebuild the index on restart.

        Removes leftover temp files (`temp_removed`) and files whose name, header or size is bad
        (`dropped`). Reads one header block per file, never payloads: payload checksums are
        verified on each read instead.
        """
        found: list[StoredChunk] = []
        temps = dropped = 0
        self.scanned = 0
        for entry in os.scandir(self.root):
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(TEMP_SUFFIX):
                temps += self._remove(entry.path, "leftover temp file")  # an interrupted O_DIRECT probe
        for i in range(256):
            shard = self.root / f"{i:02x}"
            try:
                entries = list(os.scandir(shard))
            except FileNotFoundError:
                shard.mkdir(exist_ok=True)
                continue
            for entry in entries:
                name = entry.name
                if name.endswith(TEMP_SUFFIX):
                    temps += self._remove(entry.path, "temp file of an interrupted write")
                elif name.endswith(CHUNK_SUFFIX):
                    self.scanned += 1
                    chunk, reason = self._scan_one(entry, shard.name)
                    if chunk is not None:
                        found.append(chunk)
                    else:
                        dropped += self._remove(entry.path, reason)
        with self._counter_lock:
            self.temp_removed += temps
            self.dropped += dropped
        found.sort(key=lambda c: c.mtime)
        log.info("scanned %s: %d chunks, %d dropped, %d temp files removed", self.root, len(found), dropped, temps)
        return found

    def _scan_one(self, entry: os.DirEntry[str], shard: str) -> tuple[StoredChunk | None, str]:
        stem = entry.name[: -len(CHUNK_SUFFIX)]
        try:
            key = bytes.fromhex(stem)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES or stem != key.hex() or shard != f"{key[0]:02x}":
            return None, "name is not <shard>/<32 lowercase hex>.chunk"
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file"
            with open(entry.path, "rb", buffering=0) as f:
                block = f.read(HEADER_BYTES)
            header = decode_header(block)
        except _CorruptChunk as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"unreadable: {exc}"
        if header.key != key:
            return None, f"header key {header.key.hex()} differs from the file name"
        expected = HEADER_BYTES + _round_up(header.stored)
        if st.st_size != expected:
            return None, f"file is {st.st_size} bytes, header says {expected} (truncated or extended)"
        return StoredChunk.from_header(header, st.st_size, st.st_mtime), ""

    @staticmethod
    def _remove(path: str, reason: str) -> int:
        log.warning("removing %s: %s", path, reason)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return 1

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _probe_direct_io(self) -> bool:
        """Whether this filesystem accepts an aligned O_DIRECT write (tmpfs on old kernels, some FUSE: no)."""
        if not hasattr(os, "O_DIRECT"):
            return False
        probe = self.root / f".probe-{os.getpid()}-{os.urandom(4).hex()}{TEMP_SUFFIX}"
        block = mmap.mmap(-1, BLOCK)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC, 0o600)
            try:
                os.pwritev(fd, [memoryview(block)], 0)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            log.info("O_DIRECT is not usable in %s (%s): using buffered I/O with fdatasync", self.root, exc)
            return False
        finally:
            block.close()
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass
