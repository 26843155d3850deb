"""How far does a locally missing prefix continue in the shared object tier?

Other nodes upload chunks this node has never seen, so a lookup that misses locally asks the
object tier — but the engine's scheduler is waiting, so the lookup answers within a small budget
(`--object-lookup-budget`, default 50 ms) whatever the store does.

Keys are chained, so a prompt's chunks are present as a leading run, and the probe searches for
where it ends with rounds of concurrent HEADs (the cheapest request a store answers), in one of
two ways (`tierd.tiers.object.search`, `--object-lookup-strategy`): `bisect` (the default) asks
far ahead and narrows the gap, a few rounds whatever the prompt's length; `walk` asks every key
in waves that grow fourfold. A size is all the index needs: the key already names the layout
(keys are seeded with it), and every read verifies the object's header, layout, length and
checksum before a byte is served, so a key bisect only inferred and that turns out to be missing
is a miss, never wrong data. Keys bisect did not ask about are indexed with the size of the
nearest key below them it did ask about (the same prompt, so the same layout); a read with a
wrong size hint costs one more GET.

Each round's finds are handed to the store (`on_found`) at once, so they are indexed — readable,
and known to every later lookup — as soon as they are known. When the budget runs out the lookup
answers with what is indexed by then, and the search goes on in the background (at most
`max_walks` at a time), so the next lookup of that prompt, or of any prompt sharing its prefix,
finds the rest locally. A lookup of a prompt whose search is still running — from its first key,
or from a key the search has indexed the keys before — joins it instead of starting another.

Misses are remembered for a short time (negative cache) so a burst of requests with the same
new prefix does not ask the store again and again; the store forgets a key's miss as soon as it
uploads that key itself.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Protocol, Sequence

from tierd.errors import InvalidArgumentError
from tierd.tiers.base import Found, FoundCallback
from tierd.tiers.object.breaker import CircuitBreaker
from tierd.tiers.object.format import HEADER_BYTES
from tierd.tiers.object.search import STRATEGIES, Answer, bisect, walk

log = logging.getLogger(__name__)


class SizedTier(Protocol):
    """What a probe asks of the object tier (`ObjectTier` is one): the size of a key's object
    (one HEAD; None if absent), and its breaker, so a probe does not queue on a dead store."""

    breaker: CircuitBreaker

    async def stored_size(self, key: bytes) -> int | None: ...


class SharedTierProbe:
    """The object tier's `tierd.tiers.base.PrefixProbe` (see the module docstring).
    `strategy` is "bisect" (with `fanout` keys per narrowing round) or "walk" (waves of
    `first_wave`, growing `growth`-fold up to `max_wave`)."""

    def __init__(self, tier: SizedTier, on_found: FoundCallback, *, budget: float = 0.05,
                 strategy: str = "bisect", fanout: int = 16, first_wave: int = 16, growth: int = 4,
                 max_wave: int = 256, max_walks: int = 8, negative_ttl: float = 1.0,
                 max_negative: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        if strategy not in STRATEGIES:
            raise InvalidArgumentError(f"lookup strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.tier = tier
        self.on_found = on_found
        self.budget = budget
        self.strategy = strategy
        self.fanout = fanout
        self.first_wave = first_wave
        self.growth = growth
        self.max_wave = max_wave
        self.max_walks = max_walks
        self.negative_ttl = negative_ttl
        self.max_negative = max_negative
        self.clock = clock
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        #: The searches in flight, by their prompt's first key; and by every key of their prompts,
        #: so a lookup that starts anywhere inside one joins it.
        self._walks: dict[bytes, asyncio.Task[None]] = {}
        self._joinable: dict[bytes, asyncio.Task[None]] = {}
        self.probes = 0
        self.found = 0
        self.guessed = 0
        self.rounds = 0
        self.heads = 0
        self.budget_exceeded = 0
        self.negative_hits = 0

    def forget_miss(self, key: bytes) -> None:
        """This node just wrote `key`: a remembered miss of it is stale."""
        self._negative.pop(key, None)

    def _known_missing(self, key: bytes) -> bool:
        expiry = self._negative.get(key)
        if expiry is None:
            return False
        if expiry < self.clock():
            del self._negative[key]
            return False
        return True

    def _remember_miss(self, key: bytes) -> None:
        self._negative[key] = self.clock() + self.negative_ttl
        self._negative.move_to_end(key)
        while len(self._negative) > self.max_negative:
            self._negative.popitem(last=False)

    async def extend(self, keys: Sequence[bytes]) -> None:
        """Index as much of the leading run of `keys` in the object tier as can be found within
        the budget; keep looking in the background after it (see the module docstring)."""
        if not keys or not self.tier.breaker.would_allow():
            return
        if self._known_missing(keys[0]):
            self.negative_hits += 1
            return
        self.probes += 1
        search = self._joinable.get(keys[0])
        if search is None:
            search = self._start(list(keys))
        done, _ = await asyncio.wait([search], timeout=self.budget)
        if not done:
            self.budget_exceeded += 1
            if len(self._walks) > self.max_walks:
                search.cancel()  # too many searches behind already: this one stops here

    def _start(self, keys: list[bytes]) -> asyncio.Task[None]:
        """A search of `keys` in the background, joinable from any of its keys until it ends. (A
        lookup that starts at key i of a prompt being searched is that prompt's lookup again
        after the search indexed keys 0..i-1: keys are chained, so the search answers it too.)"""
        search = asyncio.ensure_future(self._search(keys))
        self._walks[keys[0]] = search
        for key in keys:
            self._joinable.setdefault(key, search)

        def done(t: asyncio.Task[None]) -> None:
            if self._walks.get(keys[0]) is t:
                del self._walks[keys[0]]
            for key in keys:
                if self._joinable.get(key) is t:
                    del self._joinable[key]

        search.add_done_callback(done)
        return search

    async def _search(self, keys: list[bytes]) -> None:
        async def ask(positions: list[int]) -> dict[int, Answer]:
            return await self._ask(keys, positions)

        def emit(start: int, stop: int, sizes: dict[int, int]) -> None:
            self._emit(keys, start, stop, sizes)

        if self.strategy == "bisect":
            await bisect(len(keys), ask, emit, fanout=self.fanout)
        else:
            await walk(len(keys), ask, emit, first_wave=self.first_wave, growth=self.growth, max_wave=self.max_wave)

    async def _ask(self, keys: list[bytes], positions: list[int]) -> dict[int, Answer]:
        """One round: concurrent HEADs of the keys at `positions` (ascending), answered as soon as
        the round is decided (`tierd.tiers.object.search.AskRound`); the HEADs it no longer needs
        are cancelled. A key remembered missing is absent without a HEAD, and ends the round."""
        answers: dict[int, Answer] = {}
        pending: dict[asyncio.Future[int | None], int] = {}
        for p in positions:
            if self._known_missing(keys[p]):
                self.negative_hits += 1
                answers[p] = None
                break
            pending[asyncio.ensure_future(self.tier.stored_size(keys[p]))] = p
        if not pending:
            return answers
        self.rounds += 1
        self.heads += len(pending)
        try:
            while pending and not _decided(answers, pending.values()):
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for head in done:
                    answers[pending.pop(head)] = head.exception() or head.result()
        finally:
            for head in pending:
                head.cancel()
        cut = _cut(answers)
        if cut is not None and answers[cut] is None and not self._known_missing(keys[cut]):
            self._remember_miss(keys[cut])  # where the run ends: the next lookup starts there
        return answers

    def _emit(self, keys: list[bytes], start: int, stop: int, sizes: dict[int, int]) -> None:
        """Hand keys [start, stop) to the store; a key not asked about gets the size of the
        nearest key below it that was (position 0 always is)."""
        size = next((sizes[p] for p in range(start, -1, -1) if p in sizes), 0)
        run: list[Found] = []
        for p in range(start, stop):
            if p in sizes:
                size = sizes[p]
            else:
                self.guessed += 1
            run.append(Found(keys[p], size - HEADER_BYTES, object_bytes=size))
        self.found += len(run)
        self.on_found(run)

    async def close(self) -> None:
        """Stop the searches still running in the background."""
        for search in list(self._walks.values()):
            search.cancel()
        await asyncio.gather(*self._walks.values(), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"remote_lookups": self.probes, "remote_found": self.found, "remote_guessed": self.guessed,
                "remote_rounds": self.rounds, "remote_heads": self.heads,
                "remote_budget_exceeded": self.budget_exceeded, "remote_negative_hits": self.negative_hits,
                "remote_negative_cached": len(self._negative), "remote_walks": len(self._walks),
                "lookup_strategy": self.strategy}


def _cut(answers: dict[int, Answer]) -> int | None:
    """The lowest position a round found not present (absent or unknown), if any."""
    return min((p for p, a in answers.items() if not isinstance(a, int)), default=None)


def _decided(answers: dict[int, Answer], pending: Any) -> bool:
    """Whether a round's outcome is known: some position is not present and every position
    still pending lies above it."""
    cut = _cut(answers)
    return cut is not None and all(p > cut for p in pending)
