"""Reserving and pre-faulting a shared-memory arena's pages in the background.

Why: faulting in a multi-GiB arena up front (MAP_POPULATE) kept the daemon silent for seconds
before its socket appeared, and with a lazy mapping the first copies into each page pay the
kernel's allocate-and-zero inside the client's measured copy. So the arena is mapped at once and
this thread walks it while requests are already served.

Two passes over the file, in `piece`-sized steps:

1. reserve: `posix_fallocate` takes each piece's room in tmpfs now, so a /dev/shm that fills up
   after start is an error logged here, not a SIGBUS in whichever process writes there later;
2. populate: `madvise(MADV_POPULATE_WRITE)` on the owner's mapping allocates, zeroes once and maps
   each page writable, without changing its contents.

Both calls release the GIL (posix_fallocate through os, madvise through ctypes), and the thread
lowers its own CPU priority, so the event loop keeps serving. Concurrent use of the mapping is
safe: a page somebody touches first is simply found present later, its bytes untouched.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import logging
import mmap
import os
import threading
import time
from typing import Any, Callable

from tierd.sizes import MiB, format_size

log = logging.getLogger(__name__)

#: Linux >= 5.14. Older kernels answer EINVAL; pages are then touched by reading one byte each.
MADV_POPULATE_WRITE = 23
#: Bytes per step: small enough that stop() returns quickly, large enough to be cheap per call.
PIECE = 64 * MiB
#: Seconds between progress lines while the work lasts (the daemon sets its progress_interval).
DEFAULT_INTERVAL = 1.0
#: nice increment of the thread: start-up work yields to request handling.
NICE = 10


@functools.cache
def _madvise() -> Any:
    """libc's madvise through ctypes, which releases the GIL for the call."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


class _Completion:
    """A one-time "done" with callbacks: each runs once, from whoever ends the work, or at once
    when added after the end."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn()` once the work has ended: from the thread, or now if it already has."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def _end(self) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work has ended (finished, failed or stopped); False on timeout."""
        return self.done.wait(timeout)


class Prefault(_Completion):
    """The background reservation and pre-faulting of one arena mapping.

    Contract: `start()` returns at once. The owner must call `stop()` before unmapping `mm`
    (the thread writes nothing, but madvise on an unmapped range would hit another mapping).
    `error` is set, and the thread ends, when the file's room cannot be reserved; the owner
    decides what that means (the daemon stops: writes into unreserved pages could SIGBUS).
    Counters are plain ints written by the thread and read by anyone: approximate by a piece.
    """

    def __init__(self, fd: int, mm: mmap.mmap, size: int, *, where: str, piece: int = PIECE,
                 interval: float = DEFAULT_INTERVAL, name: str = "arena") -> None:
        self.fd = fd  # the owner's; it stays open until after stop()
        self.where = where  # the filesystem the room comes from, for messages
        self.size = size
        self.piece = piece
        self.interval = interval
        self.name = name
        self.reserved = 0
        self.populated = 0
        self.error: str | None = None
        self.seconds: float | None = None  # how long it took, once done
        super().__init__()
        self._stop = threading.Event()
        anchor = ctypes.c_char.from_buffer(mm)  # an export of the mapping only while reading its address
        self._address = ctypes.addressof(anchor)
        del anchor
        self._thread = threading.Thread(target=self._run, name=f"tierd-prefault-{name}", daemon=True)

    def start(self) -> "Prefault":
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread after its current piece and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._end()

    @property
    def complete(self) -> bool:
        """Every page reserved and faulted in."""
        return self.populated >= self.size

    def snapshot(self) -> dict[str, Any]:
        """For `stat` and `hello`: how far it got."""
        return {"bytes": self.size, "reserved_bytes": self.reserved, "populated_bytes": self.populated,
                "done": self.done.is_set(), "error": self.error, "seconds": self.seconds}

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        started = time.monotonic()
        self._next_report = started + self.interval
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (OSError, AttributeError):
            pass  # best effort: only the order of work changes
        try:
            if self._reserve() and self._populate():
                self.seconds = time.monotonic() - started
                log.info("%s: %s reserved and populated in %.1f s", self.name, format_size(self.size), self.seconds)
        except Exception as exc:  # never let the thread die silently: the owner reads `error`
            self.error = f"pre-faulting {self.name} failed: {exc}"
            log.exception("%s: pre-faulting failed", self.name)
        finally:
            self._end()

    def _pieces(self) -> range:
        return range(0, self.size, self.piece)

    def _reserve(self) -> bool:
        for offset in self._pieces():
            if self._stop.is_set():
                return False
            n = min(self.piece, self.size - offset)
            try:
                os.posix_fallocate(self.fd, offset, n)
            except OSError as exc:
                self.error = (f"{self.name}: cannot reserve {format_size(self.size)} in "
                              f"{self.where} ({exc.strerror}) after "
                              f"{format_size(self.reserved)}: shared memory ran out; restart with a "
                              f"smaller --dram or free shared memory")
                log.error("%s", self.error)
                return False
            self.reserved = offset + n
            self._report()
        return True

    def _populate(self) -> bool:
        madvise = _madvise()
        for offset in self._pieces():
            if self._stop.is_set():
                return False
            n = min(self.piece, self.size - offset)
            if madvise(self._address + offset, n, MADV_POPULATE_WRITE) != 0:
                err = ctypes.get_errno()
                if err in (errno.EINVAL, errno.EINTR, errno.EAGAIN):  # no such advice here, or interrupted
                    self._touch(offset, n)
                else:  # the pages stay reserved; they fault in when first used
                    log.warning("%s: pre-faulting stopped at %s (%s); pages fault in on first use",
                                self.name, format_size(offset), os.strerror(err))
                    return False
            self.populated = offset + n
            self._report()
        return True

    def _touch(self, offset: int, n: int) -> None:
        """Fault pages in by reading one byte of each (kernels without MADV_POPULATE_WRITE)."""
        page = mmap.PAGESIZE
        view = (ctypes.c_ubyte * n).from_address(self._address + offset)
        for i in range(0, n, page):
            view[i]  # noqa: B018 - the read is the point

    def _report(self) -> None:
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + self.interval
        log.info("%s: reserved %s/%s, populated %s/%s (%d%%)", self.name, format_size(self.reserved),
                 format_size(self.size), format_size(self.populated), format_size(self.size),
                 100 * (self.reserved + self.populated) // (2 * self.size))


class PrefaultGroup(_Completion):
    """The pre-faulting of an arena made of several regions (one file each), seen as one: done
    when every region's is, failed when any region's failed. Same contract as `Prefault`."""

    def __init__(self, parts: list[Prefault]) -> None:
        super().__init__()
        self.parts = parts
        self._left = len(parts)
        if not parts:
            self._end()
        for part in parts:
            part.add_done_callback(self._one_done)

    @property
    def interval(self) -> float:
        return self.parts[0].interval if self.parts else DEFAULT_INTERVAL

    @interval.setter
    def interval(self, value: float) -> None:
        for part in self.parts:
            part.interval = value

    def _one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._end()

    def stop(self) -> None:
        for part in self.parts:
            part.stop()

    @property
    def complete(self) -> bool:
        return all(part.complete for part in self.parts)

    @property
    def error(self) -> str | None:
        return next((part.error for part in self.parts if part.error), None)

    @property
    def seconds(self) -> float | None:
        times = [part.seconds for part in self.parts]
        return None if None in times else max(times, default=0.0)  # type: ignore[type-var]

    def snapshot(self) -> dict[str, Any]:
        return {"bytes": sum(p.size for p in self.parts), "reserved_bytes": sum(p.reserved for p in self.parts),
                "populated_bytes": sum(p.populated for p in self.parts), "done": self.done.is_set(),
                "error": self.error, "seconds": self.seconds}
