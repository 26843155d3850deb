"""The client's mapping of the daemon's arena (the data plane), and views of slots in it.

The arena has no path: the client asks for it (`map_arena`) and receives one file descriptor
per region it may map over the socket (`tierd.rpc.fds`). A connection bound to a tenant
namespace receives its tenant's region only, so a view of any other offset fails here, and the
memory is not in the process at all. The descriptors are closed once mapped.

Regions are mapped with MAP_POPULATE only once the daemon says their pages are all faulted in
(`hello` → `arena_populated`); a client that connects while the daemon is still pre-faulting
maps lazily, so connecting never waits for (or duplicates) that work.
"""
from __future__ import annotations

import bisect
import os
from typing import Any, Sequence

import numpy as np

from tierd.errors import PermissionDeniedError
from tierd.layout import Layout
from tierd.tiers.arena import map_fd


class ArenaViews:
    """The regions of the arena this connection holds, as numpy views of their slots (no copy)."""

    def __init__(self, regions: Sequence[dict[str, Any]], fds: Sequence[int], *, populate: bool = True) -> None:
        self.maps: list[Any] = []
        #: Each mapped region as one uint8 array (what a GPU connector pins), by increasing base.
        self.arrays: list[np.ndarray] = []
        self.bases: list[int] = []
        self.sizes: list[int] = []
        self.namespaces: list[str | None] = []
        try:
            for region, fd in sorted(zip(regions, fds), key=lambda p: p[0]["base"]):
                mm = map_fd(fd, region["size"], populate=populate)
                self.maps.append(mm)
                self.arrays.append(np.frombuffer(mm, dtype=np.uint8))
                self.bases.append(region["base"])
                self.sizes.append(region["size"])
                self.namespaces.append(region.get("namespace"))
        finally:
            for fd in fds:
                os.close(fd)

    def view(self, offset: int, nbytes: int) -> np.ndarray:
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
        self.arrays.clear()
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:  # a caller still holds a view; the mapping goes with the last one
                pass
        self.maps.clear()


def as_tensor(view: np.ndarray, layout: Layout) -> Any:
    """A torch tensor of one chunk's shape over `view` (shares its memory)."""
    import torch

    return torch.frombuffer(memoryview(view), dtype=getattr(torch, layout.dtype)).view(layout.chunk_shape)
