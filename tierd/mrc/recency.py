"""The LRU recency stack of the tracked keys, for stack distances one reference at a time.

The offline form (`exact.stack_distances`) needs the whole stream up front; the online
estimators see one reference at a time and ask "how much was touched since this key's last
use?" in O(log n).
"""
from __future__ import annotations

from typing import Hashable


class RecencyTree:
    """Tracked keys' weights, indexed by the logical time of each key's latest access.

    Invariant: slot t holds the weight of the key whose latest access got time t (and
    `_keys[t]` names it), or 0 when that key has been accessed again or dropped since. The
    weight of the keys accessed after time p is therefore `total - prefix(p)`: the LRU stack
    above a key, in O(log n) with a Fenwick tree. Times only grow; when they reach the end of
    the arrays, the live slots are renumbered 0..m-1 in order into arrays of size 2m, so the
    memory is O(tracked keys) and the renumbering O(1) amortised per access.
    """

    __slots__ = ("_tree", "_weight", "_keys", "_time", "_next", "_size", "_total", "_min_size")

    def __init__(self, min_size: int = 1024) -> None:
        self._min_size = min_size
        self._time: dict[Hashable, int] = {}
        self._total = 0
        self._rebuild([])

    def __len__(self) -> int:
        return len(self._time)

    def touch(self, key: Hashable, weight: int) -> int | None:
        """Move `key` to the top; return the weight above it plus its own, None if new."""
        t = self._time.get(key)
        above: int | None = None
        if t is not None:
            above = self._total - self._prefix(t) + weight
            self._vacate(t)
        t = self._next
        if t == self._size:
            self._rebuild([(k, self._weight[i]) for i, k in enumerate(self._keys) if k is not None])
            t = self._next
        self._add(t, weight)
        self._weight[t] = weight
        self._keys[t] = key
        self._time[key] = t
        self._total += weight
        self._next = t + 1
        return above

    def drop(self, key: Hashable) -> None:
        """Stop tracking `key` (fixed-size SHARDS evicting it from the sample)."""
        t = self._time.pop(key, None)
        if t is not None:
            self._vacate(t)

    def _vacate(self, t: int) -> None:
        w = self._weight[t]
        self._add(t, -w)
        self._total -= w
        self._weight[t] = 0
        self._keys[t] = None

    def _add(self, t: int, delta: int) -> None:
        tree, size = self._tree, self._size
        i = t + 1
        while i <= size:
            tree[i] += delta
            i += i & -i

    def _prefix(self, t: int) -> int:
        tree, s, i = self._tree, 0, t + 1
        while i:
            s += tree[i]
            i &= i - 1
        return s

    def _rebuild(self, live: list[tuple[Hashable, int]]) -> None:
        size = max(self._min_size, 2 * len(live))
        self._size = size
        self._keys: list[Hashable | None] = [None] * size
        self._weight = [0] * size
        tree = [0] * (size + 1)
        for t, (key, w) in enumerate(live):
            self._keys[t] = key
            self._weight[t] = w
            self._time[key] = t
            tree[t + 1] = w
        for i in range(1, size + 1):  # linear-time Fenwick build
            j = i + (i & -i)
            if j <= size:
                tree[j] += tree[i]
        self._tree = tree
        self._next = len(live)
