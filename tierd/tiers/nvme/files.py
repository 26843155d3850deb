"""The NVMe tier's chunk files: one checksummed file per chunk in a local directory.

`NvmeChunkFiles` only moves bytes between arena slots and files and proves them intact; the
index, LRU order and capacity accounting live in `tierd.store`. Its methods BLOCK on disk I/O:
`tierd.tiers.nvme.tier.NvmeTier` runs them on its own I/O threads for the store, and benchmarks
and tests call them directly. Methods are thread-safe for different keys; the store never runs
two methods on the same key at once, so per-key locking is not needed here.

The file format is in `tierd.tiers.nvme.format`, the aligned (O_DIRECT) transfers in
`tierd.tiers.nvme.aligned`. A tier with a codec (`tierd.tiers.encoding`) stores a codec blob
instead of the raw chunk when that is smaller; a read decodes it into the destination. A tier
with a cipher (`tierd.tiers.crypto`, `--encrypt-key-file`) encrypts what the codec made, and a
read authenticates and decrypts it before decoding.

Durability: a chunk is written to a temp file in its shard directory, fdatasync'ed, renamed
over its final name and the directory is fsync'ed; a crash leaves either the old state plus a
`.tmp` file (removed by `scan`) or the complete new file, never a torn `.chunk`. `scan` removes
only files named exactly as tierd names them, and only regular files of its own uid.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import xxhash

from tierd.errors import CapacityError, CodecError, ConfigError, InvalidArgumentError, UnknownLayoutError
from tierd.keys import check_namespace
from tierd.tiers.crypto import AuthenticationFailed, ChunkCipher, ThreadBuffer, unreadable_reason
from tierd.tiers.encoding import TierCodec
from tierd.tiers.header import associated_data, check_key, check_layout_id
from tierd.tiers.nvme.aligned import AlignedIO, byte_view, direct_io_works
from tierd.tiers.nvme.format import (
    HEADER_BYTES,
    SHARDS,
    ChunkHeader,
    CorruptChunk,
    StoredChunk,
    decode_header,
    file_name,
    file_size,
    shard_of,
    write_temp_name,
)

log = logging.getLogger(__name__)

#: Errors that say the system is short of a resource, not that the file is bad: a miss, keep the file.
_TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


class NvmeChunkFiles:
    """One file per chunk under `directory`, written crash-safely and verified on every read.

    Contract with the caller (`NvmeTier`, benchmarks, tests): every method BLOCKS on disk I/O;
    calls for different keys may run concurrently, calls for the same key never do. A read
    returns the header only for bytes that match the header's key, layout, length and the
    payload checksum; anything else deletes the file and is a miss (`corrupt` counts them).

    `codec`: what this tier writes (a `tierd.codecs` spec or a `TierCodec`; "raw" by default).
    Reads decode whatever codec a file's header names.

    `cipher`: with one, every file is written encrypted and only files that authenticate under
    its key are read; a file encrypted under another key or none, or a plaintext file, is a
    miss like any other bad file (`tierd.tiers.crypto.unreadable_reason`). Without one, an
    encrypted file is a miss.

    `direct_io`: None probes O_DIRECT on the directory's filesystem and uses it where it works
    (durable writes run several times faster than buffered writes + fdatasync on the machines
    measured by `bench/nvme_tier.py`, and chunk bytes do not crowd the page cache that the DRAM
    tier needs); True insists (ConfigError if unsupported); False forces buffered I/O.
    """

    def __init__(self, directory: str | Path, *, direct_io: bool | None = None,
                 codec: str | TierCodec = "raw", cipher: ChunkCipher | None = None) -> None:
        self.codec = codec if isinstance(codec, TierCodec) else TierCodec(codec)
        self.cipher = cipher
        self._crypt = ThreadBuffer()  # ciphertext on its way to disk, or a decrypted codec blob
        self.root = Path(directory)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for shard in SHARDS:  # all shard dirs up front: no mkdir races, one directory fsync
                (self.root / shard).mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"NVMe tier directory {str(self.root)!r}: cannot create it ({exc}); "
                              "give a writable directory") from None
        self._fsync_dir(self.root)
        supported = direct_io_works(self.root)
        if direct_io is True and not supported:
            raise ConfigError(f"NVMe tier directory {str(self.root)!r}: its filesystem does not support "
                              "O_DIRECT; use direct_io=None (auto) or False")
        self._io = AlignedIO(supported if direct_io is None else bool(direct_io))
        self._counter_lock = threading.Lock()
        #: Files removed by `scan` because their header or size was bad.
        self.dropped = 0
        #: Files removed by `read_into` because a check failed or the read failed.
        self.corrupt = 0
        #: Of `corrupt`: files this daemon's key (or lack of one) cannot read, or that failed
        #: authentication.
        self.undecryptable = 0
        #: Leftover temp files (interrupted writes) removed by `scan`.
        self.temp_removed = 0
        #: Files `scan` found in the directory and did not touch: not named or not owned as tierd's.
        self.left_alone = 0
        #: Chunk files the running (or last) `scan` has read so far, for progress lines.
        self.scanned = 0
        log.info("NVMe chunk files in %s (O_DIRECT %s, %s)", self.root, "on" if self.direct_io else "off",
                 f"encrypted with key {cipher.key_id.hex()}" if cipher is not None else "not encrypted")

    @property
    def direct_io(self) -> bool:
        """Whether files are read and written with O_DIRECT."""
        return self._io.direct

    # -- layout ---------------------------------------------------------------------------

    def path_for(self, key: bytes) -> Path:
        key = check_key(key)
        return self.root / shard_of(key) / file_name(key)

    @staticmethod
    def file_bytes_for(payload_len: int) -> int:
        """Exact st_size of the file for a payload of this length, for accounting before writing."""
        if not isinstance(payload_len, int) or isinstance(payload_len, bool) or payload_len < 0:
            raise InvalidArgumentError(f"payload_len {payload_len!r}: must be a non-negative integer")
        return file_size(payload_len)

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
        tier's codec made smaller (encoding runs here, on the calling I/O thread). With O_DIRECT
        an aligned payload goes to disk straight from its buffer in one syscall (header block,
        aligned body, zero-padded tail block). Raises InvalidArgumentError for a bad key, layout
        id, namespace or payload, CapacityError when the disk is full and OSError (its errno
        kept, the key and file named) on other I/O errors; either way no file of this write
        remains.
        """
        key = check_key(key)
        check_layout_id(layout_id)
        check_namespace(namespace)
        view = byte_view(payload, writable=False, what=f"payload for key {key.hex()}")
        raw_len = len(view)
        stored, codec = self.codec.encode(view, layout_id)
        view = memoryview(stored).cast("B")
        n = len(view)
        key_id = nonce = tag = b""
        if self.cipher is not None:  # after the codec: ciphertext does not compress
            sealed = self._crypt.get(n)
            nonce, tag = self.cipher.seal_into(namespace, associated_data(key, layout_id, namespace, raw_len, n, codec),
                                               view, sealed)
            key_id, view = self.cipher.key_id, sealed
        header = ChunkHeader(
            key=key,
            layout_id=layout_id,
            namespace=namespace,
            payload_len=raw_len,
            checksum=xxhash.xxh3_64_intdigest(view),
            created=time.time() if created is None else float(created),
            stored_len=n,
            codec=codec,
            key_id=key_id,
            nonce=nonce,
            tag=tag,
        )
        final = self.path_for(key)
        tmp = final.with_name(write_temp_name(key, os.urandom(4)))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | self._io.open_flag
        renamed = False
        try:
            fd = os.open(tmp, flags, 0o600)
            try:
                self._io.write_file(fd, header, view)
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
            raise OSError(exc.errno, f"writing chunk {key.hex()} to {str(final)!r} failed: {exc}") from exc
        return file_size(n)

    # -- read -----------------------------------------------------------------------------

    def read_into(
        self, key: bytes, dest: memoryview | bytearray, *, layout_id: str, payload_len: int,
        stored_bytes: int | None = None,
    ) -> ChunkHeader | None:
        """Fill `dest[:payload_len]` with the chunk's raw payload and return the file's header,
        only if every check passed; None is a miss.

        Checks: file size, header hash, key, layout id, payload length, the checksum of the
        stored bytes, for an encrypted chunk that this daemon has its key and that it
        authenticates, and for an encoded chunk the codec's own checks while decoding. On any
        failure or I/O error the file is deleted, counted in `corrupt` and None is returned
        (the caller treats it as a miss; `dest` may then hold partial bytes). A missing file is a
        plain None, and so is an encoded chunk of a layout not registered in this daemon (kept).
        Raises only InvalidArgumentError, for a bad key, layout id, destination or length.
        A raw chunk with O_DIRECT and an aligned `dest` arrives, header and payload, in one
        preadv straight into `dest`; an encoded or encrypted one is read into a scratch buffer
        and decoded or decrypted into `dest` on this thread. (`stored_bytes` is the LowerTier
        hint; the file's own size is used instead.)
        """
        key = check_key(key)
        check_layout_id(layout_id)
        view = byte_view(dest, writable=True, what=f"destination for key {key.hex()}")
        if not isinstance(payload_len, int) or not 0 <= payload_len <= len(view):
            raise InvalidArgumentError(f"payload_len {payload_len!r} for key {key.hex()}: must be between 0 and "
                                       f"the destination size {len(view)}")
        view = view[:payload_len]
        path = self.path_for(key)
        flags = os.O_RDONLY | os.O_CLOEXEC | self._io.open_flag
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _TRANSIENT_ERRNOS:
                log.warning("chunk %s: cannot open %s now (%s); treating as a miss", key.hex(), path, exc)
                return None
            return self._reject(path, key, f"open failed: {exc}")
        try:
            size = os.fstat(fd).st_size
            # With a cipher, files are encrypted: read them into scratch, decrypt from there into `view`.
            in_scratch = self.cipher is not None
            if size == self.file_bytes_for(payload_len):  # raw, or encoded to the same rounded size
                stored = self._io.scratch(payload_len) if in_scratch else view
                header = decode_header(self._io.read_file(fd, stored))
            else:  # encoded (smaller), or damaged: the header says which
                header = decode_header(self._io.read_header_block(fd))
                stored = None
            if header.key != key:
                raise CorruptChunk(f"header key {header.key.hex()} does not match")
            if header.layout_id != layout_id:
                raise CorruptChunk(f"header layout {header.layout_id!r}, requested {layout_id!r}")
            if header.payload_len != payload_len:
                raise CorruptChunk(f"header payload_len {header.payload_len}, requested {payload_len}")
            if size != header.medium_bytes:
                raise CorruptChunk(f"file is {size} bytes, expected {header.medium_bytes} for stored_len "
                                   f"{header.stored}")
            reason = unreadable_reason(self.cipher, header.encrypted, header.key_id)
            if reason is not None:
                raise AuthenticationFailed(reason)
            if header.codec or header.encrypted:  # to a scratch buffer: decoded or decrypted into `view`
                blob = self._io.scratch(header.stored)  # a prefix of the scratch `stored` may already be in
                if stored is None:
                    self._io.read_stored(fd, blob)
                elif not in_scratch:
                    blob[:] = stored[: header.stored]
                stored = blob
            assert stored is not None
            if xxhash.xxh3_64_intdigest(stored) != header.checksum:
                raise CorruptChunk("checksum mismatch of the stored bytes")
            if header.encrypted:
                assert self.cipher is not None
                plain = self._crypt.get(header.stored) if header.codec else view
                self.cipher.open_into(header.namespace, header.associated_data(), header.nonce, header.tag,
                                      stored, plain)
                stored = plain[: header.stored]
            if header.codec:
                self.codec.decode_into(stored, header.codec, layout_id, view)
        except UnknownLayoutError as exc:
            log.warning("chunk %s: %s; a miss for now, the file is kept", key.hex(), exc)
            return None
        except AuthenticationFailed as exc:
            with self._counter_lock:
                self.undecryptable += 1
            return self._reject(path, key, str(exc))
        except (CorruptChunk, CodecError) as exc:
            return self._reject(path, key, str(exc))
        except OSError as exc:
            return self._reject(path, key, f"read failed: {exc}")
        finally:
            os.close(fd)
        return header

    def read_header(self, key: bytes) -> ChunkHeader | None:
        """The verified header of the chunk's file (its codec and stored size, for `inspect`), or
        None if there is no file or its header is damaged (the next read deletes it)."""
        path = self.path_for(key)
        try:
            with open(path, "rb", buffering=0) as f:
                header = decode_header(f.read(HEADER_BYTES))
        except (OSError, CorruptChunk):
            return None
        return header if header.key == key else None

    def _reject(self, path: Path, key: bytes, reason: str) -> None:
        with self._counter_lock:
            self.corrupt += 1
        log.warning("chunk %s in %s is unusable (%s): deleted, serving a miss", key.hex(), path, reason)
        try:
            os.unlink(path)
        except OSError:
            pass

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
        """Every intact-looking chunk on disk, oldest mtime first (`tierd.tiers.nvme.scan`)."""
        from tierd.tiers.nvme.scan import scan

        return scan(self)

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
