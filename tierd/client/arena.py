"""The client's mapping of the daemon's arena (the data plane), and views of slots in it.

The arena is mapped with MAP_POPULATE only once the daemon says its pages are all faulted in
(`hello` → `arena_populated`); a client that connects while the daemon is still pre-faulting
maps it lazily, so connecting never waits for (or duplicates) that work.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from tierd.errors import PermissionDeniedError
from tierd.layout import Layout
from tierd.tiers.arena import map_file


class ArenaViews:
    """The arena's shared memory, as numpy views of its slots (no copy)."""

    def __init__(self, path: str, size: int, *, populate: bool = True) -> None:
        self.mm = map_file(path, size, populate=populate)
        self.array = np.frombuffer(self.mm, dtype=np.uint8)

    @classmethod
    def from_hello(cls, info: dict[str, Any]) -> "ArenaViews":
        """The arena a `hello` answer names."""
        return cls(info["arena_path"], info["arena_bytes"], populate=info.get("arena_populated", True))

    @classmethod
    def try_from_hello(cls, info: dict[str, Any]) -> "tuple[ArenaViews | None, str | None]":
        """`from_hello`, or (None, why) when this process may not map the arena (a client of
        another user than the daemon's: the arena file is the daemon user's, mode 0600). Such a
        client still has the whole control plane; only its puts and gets need the arena."""
        try:
            return cls.from_hello(info), None
        except PermissionError:
            return None, (f"this process (uid {os.getuid()}) may not map the daemon's arena {info['arena_path']}: "
                          "it may use the control plane (lookup, ls, stat, ...) but not put or get chunks")

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        return self.array[offset : offset + nbytes]

    def close(self) -> None:
        del self.array
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the last one
            pass


def as_tensor(view: np.ndarray, layout: Layout) -> Any:
    """A torch tensor of one chunk's shape over `view` (shares its memory)."""
    import torch

    return torch.frombuffer(memoryview(view), dtype=getattr(torch, layout.dtype)).view(layout.chunk_shape)
