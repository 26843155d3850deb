"""The shared-memory arena: one file in /dev/shm that the daemon creates and clients map.

Chunk bytes on the DRAM path live only here. The daemon hands out offsets; clients copy KV
straight into and out of their own mapping of the same pages, so no chunk byte crosses the
socket.

Creating an arena is instant whatever its size: the file is sized sparse (ftruncate) after
checking that /dev/shm has room for it, and mapped without populating. Its pages are then
reserved and faulted in by a background thread (`tierd.tiers.prefault`) while requests are
already served, so the socket appears at once and the first puts still mostly find their pages
present. Clients map the same file; `map_file(populate=True)` is for a client that maps an arena
whose pre-faulting has finished (its MAP_POPULATE then only fills page tables).
"""
from __future__ import annotations

import logging
import mmap
import os
import secrets
from pathlib import Path

from tierd.errors import ConfigError
from tierd.tiers.prefault import Prefault

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_PREFIX = "tierd-arena-"


def map_file(path: str | os.PathLike[str], size: int, *, populate: bool = True) -> mmap.mmap:
    """Map `size` bytes of an existing arena file, shared and read-write."""
    fd = os.open(path, os.O_RDWR)
    try:
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class SharedArena:
    """A shared-memory file of a fixed size, created by its owner and unlinked on close."""

    def __init__(self, size: int, *, directory: Path = SHM_DIR) -> None:
        if size <= 0:
            raise ConfigError(f"dram {size}: the DRAM arena needs a positive size")
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_arenas(directory)
        self.size = size
        self.path = directory / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                free = _free_bytes(directory)
                if free < size:
                    raise OSError(28, f"only {free} bytes free")
                os.ftruncate(fd, size)
            except OSError as exc:
                os.unlink(self.path)
                raise ConfigError(
                    f"dram {size} bytes: cannot allocate the arena in {directory} ({exc.strerror}); "
                    "use a smaller --dram or free shared memory"
                ) from None
        finally:
            os.close(fd)
        self.mm = map_file(self.path, size, populate=False)
        self.buf = memoryview(self.mm)
        #: The background reservation and pre-faulting of the pages (see the module docstring).
        self.prefault = Prefault(self.path, self.mm, size, name=f"arena {self.path.name}").start()

    def view(self, offset: int, nbytes: int) -> memoryview:
        return self.buf[offset : offset + nbytes]

    def close(self) -> None:
        self.prefault.stop()  # before unmapping: the thread works on this mapping's addresses
        self.buf.release()
        try:
            self.mm.close()
        except BufferError:  # a view is still exported; the unlink below still frees the name
            log.warning("arena still has exported views at close")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def remove_stale_arenas(directory: Path = SHM_DIR) -> int:
    """Unlink arena files left by daemons that died without cleaning up (kill -9)."""
    removed = 0
    for path in directory.glob(f"{_PREFIX}*"):
        try:
            pid = int(path.name[len(_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d stale arena file(s) from %s", removed, directory)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
