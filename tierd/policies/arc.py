"""Adaptive Replacement Cache (Megiddo & Modha, FAST'03) over one tier's chunks.

Why: LRU lets one burst of never-reused chunks (a long prompt's unshared tail) push out chunks
that are read again and again (a system prompt, a conversation re-read each turn). ARC keeps
two LRU lists, T1 (seen once since it came in) and T2 (seen again), and learns how much room
to give each from two ghost lists of recently evicted keys, B1 and B2: a key that comes back
from B1 says "T1 was too small", one from B2 says "T2 was too small". vLLM and LMCache offer it
as their second policy; it is here for the same comparison.

What it assumes and where it departs from the paper:

- The cache size `c` is not given to a policy (the store decides when to evict): ARC takes it
  as the most keys it has held at once. The ghosts are bounded by it as in the paper
  (|T1| + |B1| <= c, |T1| + |T2| + |B1| + |B2| <= 2c) and `p`, T1's target size, lies in [0, c].
- The store evicts before it inserts and does not say what it inserts, so REPLACE's tie rule
  ("evict from T1 when |T1| = p and the incoming key is in B2") is dropped: the first victim
  comes from T1 when |T1| > p or T2 is empty, else from T2.
- Every `remove` is an eviction (the key joins B1 or B2), as the interface asks.
- `depth` is ignored: ARC knows nothing of prefixes.

Order: `candidates()` is the list REPLACE picks from, least recently used first, then the
other list, least recently used first. T1 and T2 are each an `LRUPolicy`, which keeps a
per-group order, so `candidates(group)` is exactly that order restricted to the group and its
first key costs O(1). Every operation is O(1) amortised.
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import chain
from typing import Hashable, Iterator

from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy


class ARCPolicy(EvictionPolicy):
    """Invariant: every held key is in exactly one of T1, T2; a ghost key is in exactly one of
    B1, B2 and is never held; the ghost bounds above hold after every call."""

    name = "arc"

    def __init__(self) -> None:
        self._t1 = LRUPolicy()
        self._t2 = LRUPolicy()
        self._b1: OrderedDict[Hashable, None] = OrderedDict()
        self._b2: OrderedDict[Hashable, None] = OrderedDict()
        #: T1's target size, adapted on ghost hits.
        self.p = 0.0
        #: The cache size: the most keys held at once.
        self.c = 0

    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """A hit in T1 or T2 moves the key to T2's most-recent end; a key back from a ghost list
        adapts `p` and enters T2; a new key enters T1. `depth` is ignored."""
        if key in self._t1:
            self._t1.remove(key)
            self._t2.touch(key, group)
        elif key in self._t2:
            self._t2.touch(key, group)
        elif key in self._b1:
            step = max(len(self._b2) / len(self._b1), 1.0)
            del self._b1[key]
            self._t2.touch(key, group)
            self._grow()
            self.p = min(float(self.c), self.p + step)
        elif key in self._b2:
            step = max(len(self._b1) / len(self._b2), 1.0)
            del self._b2[key]
            self._t2.touch(key, group)
            self._grow()
            self.p = max(0.0, self.p - step)
        else:
            self._t1.touch(key, group)
            self._grow()
        self._trim()

    def remove(self, key: bytes) -> None:
        """An eviction: the key leaves T1 for B1, or T2 for B2 (a no-op for a key not held)."""
        if key in self._t1:
            self._t1.remove(key)
            self._b1[key] = None
        elif key in self._t2:
            self._t2.remove(key)
            self._b2[key] = None
        else:
            return
        self._trim()

    def _grow(self) -> None:
        self.c = max(self.c, len(self))

    def _trim(self) -> None:
        """Forget the oldest ghosts past the paper's bounds (B1 first to keep L1 <= c)."""
        while self._b1 and len(self._t1) + len(self._b1) > self.c:
            self._b1.popitem(last=False)
        while self._b2 and len(self) + len(self._b1) + len(self._b2) > 2 * self.c:
            self._b2.popitem(last=False)

    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """REPLACE's list first (T1 when |T1| > p or T2 is empty), each list least recently used
        first; restricted to `group` when given."""
        first, second = self._t1, self._t2
        if not (len(self._t1) > self.p or not len(self._t2)):
            first, second = second, first
        return chain(first.candidates(group), second.candidates(group))

    def ghosts(self) -> tuple[list[Hashable], list[Hashable]]:
        """B1 and B2, oldest first (for tests and reports; not part of the interface)."""
        return list(self._b1), list(self._b2)

    def __contains__(self, key: bytes) -> bool:
        return key in self._t1 or key in self._t2

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)
