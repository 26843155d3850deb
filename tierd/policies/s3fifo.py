"""S3-FIFO (Yang et al., SOSP'23): a small probation FIFO, a main FIFO and a ghost FIFO.

Why: most chunks a serving workload stores are used once (a prompt's unshared tail). S3-FIFO
demotes those quickly: a new key waits in a small FIFO (about 10% of the cache) and reaches the
main FIFO only if it was used again while waiting; the rest leave and are remembered as ghosts,
so a key that comes back soon after goes straight to the main FIFO. The main FIFO is a 2-bit
CLOCK: a key used since it was last looked at gets another round (its count decreases) instead
of leaving. LMCache offers it; it is here for the same comparison.

What it assumes:

- The cache size is not given to a policy: S3-FIFO takes it as the most keys it has held at
  once (`capacity`). The small FIFO's share is measured against it and the ghost FIFO holds up
  to as many keys as the main FIFO's share (90% of it), oldest forgotten first.
- Each `touch` of a held key is one use (the count saturates at 3); the first touch inserts.
- The reinsertions (small -> main, main -> main with a lower count) happen at the start of
  `candidates()`, until the first key in the order is one S3-FIFO would evict; that call is
  amortised O(1) (each reinsertion spends a count a touch paid for, or moves a key out of the
  small FIFO once). Nothing changes while the iterator is consumed.
- Every `remove` is an eviction: a key leaving the small FIFO becomes a ghost, one leaving the
  main FIFO is forgotten, as in the paper.
- A touch that moves a key to another group re-queues it at the tail of its FIFO (keeping its
  count): each FIFO keeps one order per group, and a key cannot keep its place in a group it
  was never in.
- `depth` is ignored.

Order: the FIFO S3-FIFO evicts from (the small one when it holds at least its share or the main
one is empty, else the main one), oldest first, then the other FIFO, oldest first. Each FIFO is an `LRUPolicy` touched
only on insertion, which keeps a per-group order, so `candidates(group)` is exactly that order
restricted to the group.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import chain
from typing import Hashable, Iterator

from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy

#: Share of the cache the small FIFO may hold before it is evicted from.
SMALL_SHARE = 0.10
#: Uses while in the small FIFO that earn a key its place in the main FIFO.
MOVE_TO_MAIN = 1
#: The use count's ceiling (two bits).
MAX_FREQ = 3


class S3FIFOPolicy(EvictionPolicy):
    """Invariant: every held key is in exactly one of the small and main FIFOs and has a count
    in 0..3; a ghost is never held; at most `0.9 * capacity` ghosts."""

    name = "s3fifo"

    def __init__(self) -> None:
        self._small = LRUPolicy()
        self._main = LRUPolicy()
        self._freq: dict[Hashable, int] = {}
        self._group: dict[Hashable, str] = {}
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        #: The most keys held at once.
        self.capacity = 0

    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """A use of a held key raises its count; a new key enters the small FIFO, or the main
        one if it is a ghost. `depth` is ignored."""
        freq = self._freq.get(key)
        if freq is not None:
            self._freq[key] = min(freq + 1, MAX_FREQ)
            if self._group[key] != group:
                self._group[key] = group
                (self._small if key in self._small else self._main).touch(key, group)
            return
        if self._ghost.pop(key, 1) is None:
            self._main.touch(key, group)
        else:
            self._small.touch(key, group)
        self._freq[key] = 0
        self._group[key] = group
        self.capacity = max(self.capacity, len(self._freq))
        self._trim_ghosts()

    def remove(self, key: bytes) -> None:
        """An eviction: out of the small FIFO into the ghosts, or out of the main FIFO."""
        if self._freq.pop(key, None) is None:
            return
        del self._group[key]
        if key in self._small:
            self._small.remove(key)
            self._ghost[key] = None
            self._trim_ghosts()
        else:
            self._main.remove(key)

    def _trim_ghosts(self) -> None:
        while len(self._ghost) > (1 - SMALL_SHARE) * self.capacity:
            self._ghost.popitem(last=False)

    def _evict_small_first(self) -> bool:
        small = len(self._small)
        return small > 0 and (small >= SMALL_SHARE * self.capacity or not len(self._main))

    def _reinsert(self) -> bool:
        """Move keys as S3-FIFO's eviction would, until the head of the FIFO it evicts from is a
        key it would evict; returns whether that FIFO is the small one."""
        if self._evict_small_first():
            while len(self._small):
                key = next(self._small.candidates())
                if self._freq[key] < MOVE_TO_MAIN:
                    return True
                self._small.remove(key)
                self._main.touch(key, self._group[key])
                self._freq[key] = 0
        while len(self._main):
            key = next(self._main.candidates())
            if self._freq[key] == 0:
                break
            self._freq[key] -= 1
            self._main.touch(key, self._group[key])
        return False

    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """Reinsert first (see the module docstring), then the FIFO S3-FIFO evicts from, oldest
        first, then the other; restricted to `group` when given."""
        if self._reinsert():
            first, second = self._small, self._main
        else:
            first, second = self._main, self._small
        return chain(first.candidates(group), second.candidates(group))

    def ghosts(self) -> list[Hashable]:
        """The ghost FIFO, oldest first (for tests and reports; not part of the interface)."""
        return list(self._ghost)

    def __contains__(self, key: bytes) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)
