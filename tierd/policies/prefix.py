"""Prefix-aware LRU: evict the tail of a prompt before its head, as a radix-tree cache evicts
leaves first.

Why: keys are chained, so chunk i of a prompt is useful only while chunks 0..i-1 are cached
too (an engine recomputes everything after the first miss). Plain LRU touches a prompt's chunks
in order, so the head of the oldest prompt is the least recently used and goes first, which
makes the rest of that prompt useless while it still takes room. SGLang's radix cache evicts
leaves (the deepest chunks) first; this policy gets the same order from the touches alone.

The order: the chunks of the request that used them longest ago go first, and within one request
the deepest first. What a "request" is comes from `depth` alone: the store touches a request's
chunks in prompt order (depth increasing), so a touch whose depth is not greater than the
previous touch's starts a new request. This assumes one request's touches arrive together (the
store touches an acquire's or a commit's chunks in one batch, in prompt order); where requests
interleave they are cut into pieces and the order degrades towards LRU over the pieces. A tier
filled in write-down order (every touch shallower than the last) sees one chunk a request: plain
LRU.

Data structure: one bucket per request (an insertion-ordered dict of its keys, appended in
depth order, so reversed it is deepest first), buckets in request order; a re-used key moves to
the current request's bucket. Touch and remove are O(1); the first candidate is the last key of
the oldest non-empty bucket, O(1). Each group keeps the same structure over its own keys with
the same request clock, so `candidates(group)` is exactly the global order restricted to the
group. `RequestClock` and `RequestOrder` are shared with the reuse-gap policy.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterator, cast

from tierd.policies.base import EvictionPolicy


class RequestOrder:
    """Keys in buckets by request number, oldest request first and deepest (last added) first
    within one; `put` with a request number never below any earlier one."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[int, dict[Hashable, None]] = OrderedDict()
        self._request_of: dict[Hashable, int] = {}

    def put(self, key: Hashable, request: int) -> None:
        """Add `key` (or move it) to the end of `request`'s bucket."""
        self.drop(key)
        bucket = self._buckets.get(request)
        if bucket is None:
            bucket = self._buckets[request] = {}
        bucket[key] = None
        self._request_of[key] = request

    def drop(self, key: Hashable) -> None:
        request = self._request_of.pop(key, None)
        if request is None:
            return
        bucket = self._buckets[request]
        del bucket[key]
        if not bucket:
            del self._buckets[request]

    def __iter__(self) -> Iterator[Hashable]:
        for bucket in self._buckets.values():
            yield from reversed(bucket)

    def first(self) -> Hashable | None:
        """The first key of the order, or None when empty (O(1))."""
        for bucket in self._buckets.values():
            return next(reversed(bucket))
        return None

    def request_of(self, key: Hashable) -> int | None:
        return self._request_of.get(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._request_of

    def __len__(self) -> int:
        return len(self._request_of)


class RequestClock:
    """Numbers requests from a stream of touch depths: a touch not deeper than the one before
    starts a new request."""

    def __init__(self) -> None:
        self.now = 0
        self._last_depth: int | None = None

    def tick(self, depth: int) -> int:
        """The request number of a touch at `depth`."""
        if self._last_depth is not None and depth <= self._last_depth:
            self.now += 1
        self._last_depth = depth
        return self.now


class PrefixLRUPolicy(EvictionPolicy):
    """Invariant: `_all` and the per-group orders hold each key once, in the bucket of the last
    request that touched it; a group's order is the global order restricted to it."""

    name = "prefix"

    def __init__(self) -> None:
        self._clock = RequestClock()
        self._all = RequestOrder()
        self._groups: dict[str, RequestOrder] = {}
        self._group_of: dict[Hashable, str] = {}

    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """Move `key` to the current request (a new one if `depth` is not deeper than the last
        touch's), in `group`."""
        request = self._clock.tick(depth)
        self._all.put(key, request)
        old = self._group_of.get(key)
        if old is not None and old != group:
            self._leave(key, old)
        self._group_of[key] = group
        order = self._groups.get(group)
        if order is None:
            order = self._groups[group] = RequestOrder()
        order.put(key, request)

    def remove(self, key: bytes) -> None:
        self._all.drop(key)
        group = self._group_of.pop(key, None)
        if group is not None:
            self._leave(key, group)

    def _leave(self, key: Hashable, group: str) -> None:
        order = self._groups[group]
        order.drop(key)
        if not len(order):
            del self._groups[group]

    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """Oldest request first, deepest chunk first within one; restricted to `group` if given."""
        order = self._all if group is None else self._groups.get(group)
        return cast(Iterator[bytes], iter(order if order is not None else ()))

    def __contains__(self, key: bytes) -> bool:
        return key in self._all

    def __len__(self) -> int:
        return len(self._all)
