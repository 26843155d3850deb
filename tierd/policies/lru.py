"""Least-recently-used order of the chunks in one tier.

Invariant: iteration yields every key of the tier exactly once, least recently used first;
`touch` moves a key to the most-recent end in O(1). The policy only orders; the store decides
which of the candidates may go (not pinned, not leased, not already moving).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator


class LRUPolicy:
    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def touch(self, key: bytes) -> None:
        """Record an access (insert if new)."""
        self._order[key] = None
        self._order.move_to_end(key)

    def remove(self, key: bytes) -> None:
        self._order.pop(key, None)

    def __contains__(self, key: bytes) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def oldest_first(self) -> Iterator[bytes]:
        """Keys from least to most recently used. Do not mutate the policy while iterating."""
        return iter(self._order)
