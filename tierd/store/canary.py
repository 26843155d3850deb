"""A committed slot is what its writer wrote: the canary that proves a reserved slot was written.

Slots are reused without being cleared, so a slot handed out for a put still holds the bytes of
whatever chunk had it before, possibly another namespace's. A client that commits before its
copy has finished (a device copy not yet synchronised, vLLM has had exactly that bug) or
without copying at all would otherwise make those old bytes a stored chunk: served, written
down and uploaded under the new key.

When a slot is reserved, the daemon writes a random 64-bit canary into the last 8 bytes of every
4 KiB page of it (and the chunk's last 8 bytes); a commit is refused while any of them still
holds it. A writer that wrote every byte overwrote every canary; one that wrote nothing, or
stopped part way, left some. Legitimate KV equals a fresh random 64-bit value by chance with
probability 2**-64 per page. The cost is one cache line per page at reserve and at commit, not a
pass over the chunk (`bench/dram_tier.py` measures it against puts without the check).

Not caught: a copy that stops within the last 8 bytes of a page (the canary word is then only
partly overwritten), or that writes a page out of order and stops inside it; the connectors'
copies write each chunk front to back, in whole blocks.
"""
from __future__ import annotations

import secrets

import numpy as np

#: Bytes between canaries: one per 4 KiB page.
PAGE = 4096
_WORD = 8


def _pages(view: memoryview) -> np.ndarray:
    """The last word of each full page of a slot, as a strided uint64 view (no copy)."""
    full = len(view) // PAGE
    if not full:
        return np.empty(0, dtype="<u8")
    return np.ndarray((full,), dtype="<u8", buffer=view, offset=PAGE - _WORD, strides=(PAGE,))


def arm(view: memoryview) -> int:
    """Write a fresh canary into a reserved slot; returns it (kept with the reservation)."""
    if len(view) < _WORD:
        raise ValueError(f"a chunk of {len(view)} bytes is too small to hold a canary")
    value = secrets.randbits(64)
    _pages(view)[:] = value
    view[len(view) - _WORD:] = value.to_bytes(_WORD, "little")
    return value


def unwritten(view: memoryview, value: int | None) -> int | None:
    """The byte offset of the first canary still in the slot (the writer did not write it), or
    None when the writer overwrote them all (or no canary was armed: `value` None)."""
    if value is None:
        return None
    left = np.flatnonzero(_pages(view) == value)
    if len(left):
        return int(left[0]) * PAGE + PAGE - _WORD
    if int.from_bytes(view[len(view) - _WORD:], "little") == value:
        return len(view) - _WORD
    return None
