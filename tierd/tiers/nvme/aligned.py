"""Moving a chunk file's bytes in whole aligned blocks, so that O_DIRECT works on any buffer.

O_DIRECT needs every buffer address, length and file offset to be a multiple of 4096. An arena
slot is page aligned, so its bytes go to and from disk straight from the slot in one
preadv/pwritev (header block, aligned body, a zero-padded tail block from a scratch page). Any
other buffer goes through a per-thread aligned bounce buffer. Buffered I/O (`direct=False`)
writes and reads the same file bytes without those constraints.

Every scratch buffer is per thread (`threading.local`): the NVMe tier's I/O threads never share
one, so calls for different keys run concurrently without locks.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError
from tierd.tiers.nvme.format import BLOCK, HEADER_BYTES, ChunkHeader, encode_header, probe_temp_name, round_up

log = logging.getLogger(__name__)

#: Size of the aligned bounce buffer used when a payload or destination is not page-aligned.
_BOUNCE_BYTES = 4 * 1024 * 1024


def byte_view(buf: memoryview | bytes | bytearray, *, writable: bool, what: str) -> memoryview:
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
            self.scratch_view = memoryview(mmap.mmap(-1, round_up(max(nbytes, BLOCK))))
        return self.scratch_view


class AlignedIO:
    """Whole-file reads and writes of chunk files opened with (or without) O_DIRECT."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct
        self._buffers = _ThreadBuffers()

    @property
    def open_flag(self) -> int:
        """The flag to add to `os.open` for files this object reads and writes."""
        return os.O_DIRECT if self.direct else 0

    def scratch(self, nbytes: int) -> memoryview:
        """This thread's aligned scratch buffer, cut to `nbytes`."""
        return self._buffers.scratch(nbytes)[:nbytes]

    def write_file(self, fd: int, header: ChunkHeader, view: memoryview) -> None:
        """Header block, then `view` zero-padded to whole blocks, from offset 0."""
        bufs = self._buffers
        head = bufs.small_view[:BLOCK]
        encode_header(header, head)
        n = len(view)
        if not self.direct:
            pad = round_up(n) - n
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
            padded = round_up(m)
            bounce[:m] = view[done : done + m]
            bounce[m:padded] = bytes(padded - m)
            _transfer_all(os.pwritev, fd, [bounce[:padded]], HEADER_BYTES + done)
            done += m

    def read_header_block(self, fd: int) -> memoryview:
        """The file's header block, in this thread's scratch page."""
        head = self._buffers.small_view[:BLOCK]
        _transfer_all(os.preadv, fd, [head], 0)
        return head

    def read_stored(self, fd: int, blob: memoryview) -> None:
        """Read the stored bytes after the header into `blob`, a prefix of this thread's scratch."""
        whole = self._buffers.scratch(len(blob))[: round_up(len(blob))]
        _transfer_all(os.preadv, fd, [whole], HEADER_BYTES)

    def read_file(self, fd: int, view: memoryview) -> memoryview:
        """Read header and payload (into `view`); returns the header block."""
        bufs = self._buffers
        head = bufs.small_view[:BLOCK]
        n = len(view)
        if not self.direct:
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
            _transfer_all(os.preadv, fd, [bounce[: round_up(m)]], HEADER_BYTES + done)
            view[done : done + m] = bounce[:m]
            done += m
        return head


def direct_io_works(root: Path) -> bool:
    """Whether this filesystem accepts an aligned O_DIRECT write (tmpfs on old kernels, some FUSE: no)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = root / probe_temp_name(os.getpid(), os.urandom(4))
    block = mmap.mmap(-1, BLOCK)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC, 0o600)
        try:
            os.pwritev(fd, [memoryview(block)], 0)
        finally:
            os.close(fd)
        return True
    except OSError as exc:
        log.info("O_DIRECT is not usable in %s (%s): using buffered I/O with fdatasync", root, exc)
        return False
    finally:
        block.close()
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass
