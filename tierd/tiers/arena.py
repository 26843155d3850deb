"""The shared-memory arena: unnamed files in /dev/shm that the daemon creates and hands to clients.

Chunk bytes on the DRAM path live only here. The daemon hands out offsets; clients copy KV
straight into and out of their own mapping of the same pages, so no chunk byte crosses the
socket.

No path: each region of the arena is an `O_TMPFILE` file of /dev/shm (shared memory with a
name nobody can open), and a client receives its file descriptor over the daemon's socket
(SCM_RIGHTS, `tierd.rpc.fds`). A process therefore holds only the memory the daemon gave it,
and a daemon killed with -9 leaves nothing behind: the pages go with the last descriptor.

Regions: one shared region, and one per *tenant* namespace (a namespace bound to a user in
the config, `--namespaces`). A tenant's chunks live only in its region, and a connection bound
to a tenant receives that region alone, so it never maps a byte of anyone else's KV. Offsets
are global: region i covers `[base_i, base_i + size_i)`, so the store keeps one integer per slot.

Creating an arena is instant whatever its size: the files are sized sparse (ftruncate) after
checking that /dev/shm has room for them, and mapped without populating. Their pages are then
reserved and faulted in by background threads (`tierd.tiers.prefault`) while requests are
already served.
"""
from __future__ import annotations

import bisect
import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tierd.errors import ConfigError
from tierd.sizes import format_size
from tierd.tiers.prefault import Prefault, PrefaultGroup

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
#: Regions start on this boundary (the allocator's alignment and the page size).
REGION_ALIGN = 1 << 21


def map_fd(fd: int, size: int, *, populate: bool = True) -> mmap.mmap:
    """Map `size` bytes of an arena region's file, shared and read-write."""
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


@dataclass(eq=False)
class Region:
    """One file of the arena. `namespace` None: the shared region (every untenanted namespace)."""

    namespace: str | None
    base: int
    size: int
    fd: int
    mm: mmap.mmap = field(repr=False)
    buf: memoryview = field(repr=False)

    def describe(self) -> dict[str, object]:
        return {"namespace": self.namespace, "base": self.base, "size": self.size}


def region_sizes(total: int, tenants: Mapping[str, int | None]) -> dict[str | None, int]:
    """How `total` bytes split into the shared region and one region per tenant: a tenant's DRAM
    quota where it has one, else an equal share with the shared region; all rounded down to
    REGION_ALIGN. Raises ConfigError when the tenants leave the shared region nothing."""
    unsized = [ns for ns, q in tenants.items() if q is None]
    fixed = sum(q for q in tenants.values() if q is not None)
    share = (total - fixed) // (len(unsized) + 1) if unsized else 0
    sizes: dict[str | None, int] = {ns: _align_down(q if q is not None else share) for ns, q in tenants.items()}
    sizes[None] = _align_down(total - sum(sizes.values())) if tenants else total
    small = [ns for ns, n in sizes.items() if n < REGION_ALIGN and (ns is not None or tenants)]
    if small:
        who = ", ".join("the shared region" if ns is None else f"tenant {ns!r}" for ns in small)
        raise ConfigError(f"dram {format_size(total)}: too small to give {who} a region of at least "
                          f"{format_size(REGION_ALIGN)} beside the tenants' regions ({len(tenants)} bound "
                          "namespaces); use a larger --dram or smaller DRAM quotas")
    return sizes


def _align_down(n: int) -> int:
    return n - n % REGION_ALIGN


class SharedArena:
    """The arena's regions, created by the daemon and closed with it."""

    def __init__(self, size: int, *, directory: Path = SHM_DIR,
                 tenants: Mapping[str, int | None] | None = None) -> None:
        if size <= 0:
            raise ConfigError(f"dram {size}: the DRAM arena needs a positive size")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        sizes = region_sizes(size, tenants or {})
        self.size = sum(sizes.values())
        free = _free_bytes(directory)
        if free < self.size:
            raise ConfigError(f"dram {size} bytes: cannot allocate the arena in {directory} (only {free} bytes "
                              "free); use a smaller --dram or free shared memory")
        self.regions: list[Region] = []
        self._by_namespace: dict[str | None, Region] = {}
        base = 0
        try:
            for namespace in [None, *sorted(n for n in sizes if n is not None)]:
                region = self._create(namespace, base, sizes[namespace])
                self.regions.append(region)
                self._by_namespace[namespace] = region
                base += region.size
        except BaseException:
            self._close_regions()
            raise
        self._bases = [r.base for r in self.regions]
        #: The background reservation and pre-faulting of the pages (see the module docstring).
        self.prefault = PrefaultGroup([
            Prefault(r.fd, r.mm, r.size, where=str(directory),
                     name="arena" if r.namespace is None else f"arena region {r.namespace!r}").start()
            for r in self.regions])

    def _create(self, namespace: str | None, base: int, size: int) -> Region:
        try:
            fd = os.open(self.directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the arena in {self.directory} ({exc.strerror}): it needs a "
                              "tmpfs that supports unnamed files (O_TMPFILE)") from None
        try:
            os.ftruncate(fd, size)
            mm = map_fd(fd, size, populate=False)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"dram {size} bytes: cannot allocate the arena in {self.directory} "
                              f"({exc.strerror}); use a smaller --dram or free shared memory") from None
        return Region(namespace, base, size, fd, mm, memoryview(mm))

    @property
    def description(self) -> str:
        """Where the arena is, for the ready line and `stat` (it has no path)."""
        return f"{len(self.regions)} unnamed region(s) in {self.directory}"

    def region_for(self, namespace: str | None) -> Region:
        """The region a namespace's chunks live in: its own if it is a tenant's, else the shared one."""
        return self._by_namespace.get(namespace) or self._by_namespace[None]

    def region_at(self, offset: int) -> Region:
        return self.regions[bisect.bisect_right(self._bases, offset) - 1]

    def view(self, offset: int, nbytes: int) -> memoryview:
        r = self.region_at(offset)
        start = offset - r.base
        return r.buf[start : start + nbytes]

    def close(self) -> None:
        self.prefault.stop()  # before unmapping: the threads work on these mappings' addresses
        self._close_regions()

    def _close_regions(self) -> None:
        for r in self.regions:
            r.buf.release()
            try:
                r.mm.close()
            except BufferError:  # a view is still exported; the mapping goes with the last one
                log.warning("arena region %r still has exported views at close", r.namespace)
            try:
                os.close(r.fd)
            except OSError:
                pass
        self.regions = []


def _free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
