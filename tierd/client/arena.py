"""The client's mapping of the daemon's arena (the data plane), and views of slots in it.

The arena has no path: the client asks for it (`map_arena`) and receives one file descriptor
per region it may map over the socket (`tierd.rpc.fds`). A connection bound to a tenant
namespace receives its tenant's region only, so a view of any other offset fails here, and the
memory is not in the process at all. The descriptors are closed once mapped.

One mapping per region per process: every connection receives its own descriptors, but a
process maps each region's file once (`_MappingTable`, keyed by the file's identity) and every
connection of the process shares that mapping, at one address. A vLLM worker has two
connections (loads and saves): mapped per connection, it held the arena twice at two addresses
and a GPU worker registered it twice with `cudaHostRegister`. A region is unmapped when the last
connection holding it closes. A restarted daemon makes new files (new inodes: a mapped file
stays alive, so its inode is not reused while it is mapped here), hence new mappings.

Regions are mapped with MAP_POPULATE only once the daemon says their pages are all faulted in
(`hello` → `arena_populated`); a client that connects while the daemon is still pre-faulting
maps lazily, so connecting never waits for (or duplicates) that work. A region already mapped
by another connection of the process keeps the way it was first mapped.
"""
from __future__ import annotations

import bisect
import mmap
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from tierd.errors import PermissionDeniedError
from tierd.layout import Layout
from tierd.tiers.arena import map_fd


class RegionKey(NamedTuple):
    """A region's identity in this process: its file (device and inode) and its mapped size. Two
    descriptors of one file, received by two connections, have the same key."""

    dev: int
    ino: int
    size: int


@dataclass(eq=False)
class _Mapping:
    mm: mmap.mmap
    #: The whole region as one uint8 array: what every holder's `ArenaViews.arrays` holds.
    array: np.ndarray
    holders: int = 0


class _MappingTable:
    """This process's mappings of arena regions, counted by holder (one per `ArenaViews`).

    One lock for the table: mapping a region (MAP_POPULATE can take a while for a large one)
    happens under it, so a second connection of the same region waits for that mapping instead
    of making its own. A release only queues its holds (`_pending`, appended without the lock);
    every operation drops the queued holds under the lock, first and last. That is what lets a
    client collected unclosed release from its finalizer, which the garbage collector may run in
    this very thread in the middle of an operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: dict[RegionKey, _Mapping] = {}
        self._pending: list[RegionKey] = []  # holds released, not yet dropped from `_maps`

    def _drop_pending(self, unmapped: list[mmap.mmap]) -> None:
        """Under the lock: drop the queued holds; mappings whose last holder went go to `unmapped`
        (the caller closes them once the lock is released)."""
        while self._pending:  # a release queued from inside this loop is taken too
            key = self._pending.pop()
            m = self._maps[key]
            m.holders -= 1
            if m.holders == 0:
                del self._maps[key]
                unmapped.append(m.mm)
                del m.array  # the table's own export of the buffer goes first

    def acquire(self, fd: int, size: int, *, populate: bool) -> tuple[RegionKey, np.ndarray]:
        """The mapping of the region `fd` is a descriptor of (made now if the process has none),
        with one more holder. The caller still closes `fd`."""
        st = os.fstat(fd)
        key = RegionKey(st.st_dev, st.st_ino, size)
        unmapped: list[mmap.mmap] = []
        with self._lock:
            self._drop_pending(unmapped)
            m = self._maps.get(key)
            if m is None:
                mm = map_fd(fd, size, populate=populate)
                m = self._maps[key] = _Mapping(mm, np.frombuffer(mm, dtype=np.uint8))
            m.holders += 1
            array = m.array
            self._drop_pending(unmapped)
        _unmap(unmapped)
        return key, array

    def release(self, keys: list[RegionKey], *, now: bool = True) -> None:
        """Drop one hold of each of `keys` (and empty the list); a region's last holder unmaps it.
        `now=False` (a finalizer) only queues them for the next operation of the table."""
        self._pending.extend(keys)
        keys.clear()
        if now:
            self.holders()

    def holders(self) -> dict[RegionKey, int]:
        """Each mapped region and how many connections of this process hold it."""
        unmapped: list[mmap.mmap] = []
        with self._lock:
            self._drop_pending(unmapped)
            held = {key: m.holders for key, m in self._maps.items()}
        _unmap(unmapped)
        return held

    def after_fork(self) -> None:
        """A child inherits the mappings (MAP_SHARED, still valid) but not the other threads: a
        lock one of them held would never be released."""
        self._lock = threading.Lock()


def _unmap(mappings: list[mmap.mmap]) -> None:
    for mm in mappings:
        try:
            mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the last one
            pass


_TABLE = _MappingTable()
os.register_at_fork(after_in_child=_TABLE.after_fork)


def mapped_regions() -> dict[RegionKey, int]:
    """The arena regions this process has mapped, and how many connections hold each."""
    return _TABLE.holders()


class ArenaViews:
    """The regions of the arena this connection holds, as numpy views of their slots (no copy).
    The mappings are the process's (`_MappingTable`): shared with its other connections."""

    def __init__(self, regions: Sequence[dict[str, Any]], fds: Sequence[int], *, populate: bool = True) -> None:
        #: Each mapped region as one uint8 array (what a GPU connector pins), by increasing base;
        #: the same array object, at the same address, in every connection of this process.
        self.arrays: list[np.ndarray] = []
        #: Each region's identity, parallel to `arrays` (equal keys: the same mapping).
        self.keys: list[RegionKey] = []
        self.bases: list[int] = []
        self.sizes: list[int] = []
        self.namespaces: list[str | None] = []
        # What this object holds in the table, released once: by close(), or when it is
        # collected unclosed (a client dropped without close() must not pin the mapping forever).
        self._held: list[RegionKey] = []
        self.closed = False
        self._release = weakref.finalize(self, _TABLE.release, self._held, now=False)
        self._release.atexit = False
        try:
            for region, fd in sorted(zip(regions, fds), key=lambda p: p[0]["base"]):
                key, array = _TABLE.acquire(fd, region["size"], populate=populate)
                self._held.append(key)
                self.keys.append(key)
                self.arrays.append(array)
                self.bases.append(region["base"])
                self.sizes.append(region["size"])
                self.namespaces.append(region.get("namespace"))
        except BaseException:
            self.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        if self.closed:
            raise PermissionDeniedError("this connection's arena views are closed")
        i = bisect.bisect_right(self.bases, offset) - 1
        if i < 0 or offset + nbytes > self.bases[i] + self.sizes[i]:
            raise PermissionDeniedError(
                f"arena bytes {offset}..{offset + nbytes} are not in a region this connection holds "
                f"(it holds {self.describe()}): they belong to another namespace")
        start = offset - self.bases[i]
        return self.arrays[i][start : start + nbytes]

    def describe(self) -> str:
        return ", ".join(f"{'shared' if ns is None else repr(ns)} [{b}, {b + n})"
                         for ns, b, n in zip(self.namespaces, self.bases, self.sizes)) or "none"

    def close(self) -> None:
        """Drop this connection's hold on its regions (idempotent); a region is unmapped when the
        last connection of the process holding it closes, or later if views of it are still alive.
        Afterwards any view fails with PermissionDeniedError; `arrays` is emptied, while `keys`,
        `bases`, `sizes` and `namespaces` still say what the connection held."""
        self.closed = True
        self.arrays.clear()
        if self._release.detach() is not None:  # (once: a second close finds it detached)
            _TABLE.release(self._held)


def as_tensor(view: np.ndarray, layout: Layout) -> Any:
    """A torch tensor of one chunk's shape over `view` (shares its memory)."""
    import torch

    return torch.frombuffer(memoryview(view), dtype=getattr(torch, layout.dtype)).view(layout.chunk_shape)
