"""Reuse-gap policy: prefix-ordered LRU that keeps reused chunks longer, by as long as reuses take.

Why: in a KV cache most chunks are never read again (on the Mooncake conversation trace, 76% of
the chunks stored are not), while a chunk that has been reused is likely to be reused again (42%
after one reuse, 78% after three), but only after a long wait: a conversation's next turn comes
minutes later, hundreds of requests on. LRU keeps every chunk for the same time, too short for
those turns once the cache is small. This policy gives a reused chunk a head start of `bonus`
requests over a chunk never reused, and learns `bonus` from the workload: it is the 90th
percentile of the gaps (in requests) after which reused chunks came back. A workload whose
reuses come quickly (an agent loop re-reading its context every few requests) gets a small
bonus and stays close to LRU, so sessions that ended do not squat; one whose reuses come late
(human conversations) gets a large one.

What a KV cache knows and a generic cache does not, used here:

- Chained keys (`depth`): chunks are ordered as `PrefixLRUPolicy` orders them, by the request
  that last used them and deepest first within it, so a prompt loses its tail before its head
  and a kept chunk is not left useless for want of its predecessors.
- Requests, from the depths alone (a touch not deeper than the previous one starts a request;
  see `RequestClock`), are the clock: gaps and the bonus are counted in requests, the unit in
  which a conversation or an agent loop comes back.
- Ghosts: keys of evicted chunks, up to `GHOSTS` times the most chunks held, remember when they
  were last used and whether they had been reused. A ghost that comes back counts as a reuse
  (its gap is observed, beyond what the cache could hold) and returns as a reused chunk.

Order (`candidates()`): by `request + bonus[shelf]`, where the shelves are never reused (bonus
0), reused once (`bonus`) and reused twice or more (`TWICE_FACTOR * bonus`); ties go to the
lower shelf, and within one request the deepest chunk comes first. A deeper chunk of a prompt is
on the same shelf as a shallower one or a lower one (every use of it used them too, unless one
was evicted and forgotten in between), so a prompt still loses its tail first. Every group keeps
the same shelves over its own keys, so `candidates(group)` is exactly the global order
restricted to the group. Touch and remove are O(1) amortised (the percentile is recomputed every
`period` reuses over a fixed number of bins); the first candidate costs O(shelves).

Assumptions: one request's touches arrive together and in prompt order, as the store's
acquire and commit batches do (where requests interleave they are cut into pieces, and the
order degrades towards LRU over those pieces; a tier filled in write-down order, one chunk a
"request", gets LRU with the bonus counted in chunks); reuse is what predicts reuse (true of
conversations and agent loops; where reused chunks are never reused again no gap is recorded,
the bonus stays 0 and the order is `prefix`'s).

Tuned with `tierd.mrc.simulate` on both Mooncake traces at 2,000 to 40,000 blocks and on a
generated agentic trace (interleaved sessions whose context grows each turn): see the commit
that added this module for the table. On the conversation trace at 5,000 blocks (0.174 with the
values here) the constants are flat nearby: `QUANTILE` 0.85-0.95 gives 0.172-0.174,
`TWICE_FACTOR` 1.25-2 gives 0.173 (1, i.e. no third shelf, 0.170), `GHOSTS` 4-8 gives
0.173-0.176 (2: 0.162). A fixed bonus instead of the learned one does as well on the Mooncake
traces (about 1,000 requests) but loses up to 0.06 against LRU on the agentic trace, where
sessions come back within tens of requests and a finished session's chunks would squat.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Hashable, Iterator, cast

from tierd.policies.base import EvictionPolicy
from tierd.policies.prefix import RequestClock, RequestOrder

#: Shelves: never reused, reused once, reused twice or more.
NEW, ONCE, TWICE = 0, 1, 2
SHELVES = (NEW, ONCE, TWICE)
#: Ghosts kept, as a multiple of the most chunks held at once.
GHOSTS = 4
#: Percentile of observed reuse gaps that sets the bonus of a chunk reused once.
QUANTILE = 0.9
#: Chunks reused twice or more get this many times the bonus.
TWICE_FACTOR = 1.5


class ReuseGaps:
    """Observed reuse gaps, in requests: a log-scale histogram (four bins an octave) whose weight
    halves every `halflife` observations; `quantile` is refreshed every `period` observations."""

    BINS = 96

    def __init__(self, quantile: float = QUANTILE, period: int = 256, halflife: int = 20000) -> None:
        if not 0 < quantile <= 1:
            raise ValueError("the quantile must lie in (0, 1]")
        if period < 1:
            raise ValueError("the period must be at least one observation")
        self.q = quantile
        self.period = period
        self._decay = 0.5 ** (period / halflife)
        self._bins = [0.0] * self.BINS
        self._seen = 0
        #: The q-quantile of the gaps seen, rounded up to its bin's end; 0 before the first refresh.
        self.quantile = 0.0

    @classmethod
    def bin_of(cls, gap: int) -> int:
        return min(int(math.log2(gap + 1) * 4), cls.BINS - 1)

    @staticmethod
    def upper_edge(b: int) -> float:
        """Where bin `b` ends: it holds the gaps in [2**(b/4) - 1, 2**((b+1)/4) - 1)."""
        return 2 ** ((b + 1) / 4) - 1

    def add(self, gap: int) -> bool:
        """Record one gap; returns whether `quantile` was refreshed."""
        self._bins[self.bin_of(max(gap, 0))] += 1
        self._seen += 1
        if self._seen % self.period:
            return False
        target, acc = self.q * sum(self._bins), 0.0
        for b, weight in enumerate(self._bins):
            acc += weight
            if acc >= target:
                break
        self.quantile = self.upper_edge(b)
        self._bins = [w * self._decay for w in self._bins]
        return True


class _Shelves:
    """One request order per shelf over one set of keys."""

    def __init__(self) -> None:
        self.orders = [RequestOrder() for _ in SHELVES]
        self.size = 0

    def put(self, key: Hashable, shelf: int, request: int) -> None:
        """Add a key not on any shelf."""
        self.orders[shelf].put(key, request)
        self.size += 1

    def drop(self, key: Hashable, shelf: int) -> None:
        self.orders[shelf].drop(key)
        self.size -= 1

    def ordered(self, bonus: list[float]) -> Iterator[Hashable]:
        """The shelves merged by `request + bonus[shelf]`, ties to the lower shelf, each shelf
        in its own order."""
        heads: list[list[Any]] = []  # [priority, shelf, key, rest of the shelf]
        for shelf in SHELVES:
            rest: Iterator[Any] = iter(self.orders[shelf])
            key = next(rest, _END)
            if key is not _END:
                heads.append([self._priority(shelf, key, bonus), shelf, key, rest])
        while heads:
            head = min(heads, key=_rank)
            yield head[2]
            key = next(head[3], _END)
            if key is _END:
                heads.remove(head)
            else:
                head[0], head[2] = self._priority(head[1], key, bonus), key

    def _priority(self, shelf: int, key: Hashable, bonus: list[float]) -> float:
        return self.orders[shelf].request_of(key) + bonus[shelf]  # type: ignore[operator]


_END = object()


def _rank(head: list[Any]) -> tuple[float, int]:
    return head[0], head[1]


class ReuseGapPolicy(EvictionPolicy):
    """Invariant: each held key is on exactly one shelf, globally and in its group, in the
    bucket of the last request that touched it; a ghost is never held; at most
    `GHOSTS * capacity` ghosts."""

    name = "reuse-gap"

    def __init__(self, period: int = 256) -> None:
        self._clock = RequestClock()
        self._all = _Shelves()
        self._groups: dict[str, _Shelves] = {}
        self._group_of: dict[Hashable, str] = {}
        #: key -> (shelf, last request)
        self._where: dict[Hashable, tuple[int, int]] = {}
        #: evicted key -> (shelf it left, last request), oldest first
        self._ghosts: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()
        self.gaps = ReuseGaps(period=period)
        #: Head start, in requests, per shelf.
        self.bonus = [0.0, 0.0, 0.0]
        #: The most keys held at once.
        self.capacity = 0

    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """A use (insert if new): onto NEW, or one shelf up (at most TWICE) for a held key or a
        returning ghost, whose gap is recorded if it had been reused before."""
        request = self._clock.tick(depth)
        held = self._where.get(key)
        if held is not None:
            shelf = self._reused(*held, request)
        else:
            ghost = self._ghosts.pop(key, None)
            shelf = NEW if ghost is None else self._reused(*ghost, request)
        self._put(key, group, shelf, request)
        self.capacity = max(self.capacity, len(self._where))
        self._trim_ghosts()

    def _reused(self, shelf: int, last: int, request: int) -> int:
        """Record a reuse of a key last used in request `last`; returns its new shelf."""
        if shelf >= ONCE and self.gaps.add(request - last):
            self.bonus[ONCE] = self.gaps.quantile
            self.bonus[TWICE] = TWICE_FACTOR * self.gaps.quantile
        return ONCE if shelf == NEW else TWICE

    def _put(self, key: Hashable, group: str, shelf: int, request: int) -> None:
        self._drop(key)
        self._where[key] = (shelf, request)
        self._group_of[key] = group
        self._all.put(key, shelf, request)
        shelves = self._groups.get(group)
        if shelves is None:
            shelves = self._groups[group] = _Shelves()
        shelves.put(key, shelf, request)

    def _drop(self, key: Hashable) -> tuple[int, int] | None:
        held = self._where.pop(key, None)
        if held is None:
            return None
        self._all.drop(key, held[0])
        group = self._group_of.pop(key)
        shelves = self._groups[group]
        shelves.drop(key, held[0])
        if not shelves.size:
            del self._groups[group]
        return held

    def remove(self, key: bytes) -> None:
        """An eviction: the key becomes a ghost (a no-op for a key not held)."""
        held = self._drop(key)
        if held is None:
            return
        self._ghosts[key] = held
        self._trim_ghosts()

    def _trim_ghosts(self) -> None:
        while len(self._ghosts) > GHOSTS * self.capacity:
            self._ghosts.popitem(last=False)

    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """By `request + bonus[shelf]` (see the module docstring); restricted to `group` when
        given."""
        shelves = self._all if group is None else self._groups.get(group)
        if shelves is None:
            return iter(())
        return cast(Iterator[bytes], shelves.ordered(list(self.bonus)))

    def shelf_of(self, key: Hashable) -> int | None:
        """The shelf a held key is on (for tests and reports; not part of the interface)."""
        held = self._where.get(key)
        return None if held is None else held[0]

    def ghosts(self) -> list[Hashable]:
        """Ghost keys, oldest first (for tests and reports; not part of the interface)."""
        return list(self._ghosts)

    def __contains__(self, key: bytes) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)
