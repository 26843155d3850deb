"""Least-recently-used order of the chunks in one tier.

Invariant: iteration yields every key of the tier exactly once, least recently used first;
`touch` moves a key to the most-recent end in O(1). The policy only orders; the store decides
which of the candidates may go (not pinned, not leased, not already moving).

Keys may belong to a group (the store uses the namespace): each group keeps its own order, the
same as the tier's order restricted to the group, so a namespace over its quota finds its own
oldest chunk without walking every other namespace's chunks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

from tierd.policies.base import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()
        self._groups: dict[str, OrderedDict[bytes, None]] = {}
        self._group_of: dict[bytes, str] = {}

    name = "lru"

    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """Record an access (insert if new), in `group` (a key moves if its group changed);
        LRU ignores `depth`."""
        self._order[key] = None
        self._order.move_to_end(key)
        old = self._group_of.get(key)
        if old is not None and old != group:
            self._leave(key, old)
        self._group_of[key] = group
        order = self._groups.setdefault(group, OrderedDict())
        order[key] = None
        order.move_to_end(key)

    def remove(self, key: bytes) -> None:
        self._order.pop(key, None)
        group = self._group_of.pop(key, None)
        if group is not None:
            self._leave(key, group)

    def _leave(self, key: bytes, group: str) -> None:
        order = self._groups[group]
        order.pop(key, None)
        if not order:
            del self._groups[group]

    def __contains__(self, key: bytes) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """Keys (of `group`, or all) from least to most recently used. Do not mutate the policy
        while iterating."""
        if group is None:
            return iter(self._order)
        return iter(self._groups.get(group, ()))
