"""How far does a locally missing prefix continue in the shared object tier?

Other nodes upload chunks this node has never seen, so a lookup that misses locally asks the
object tier — but the engine's scheduler is waiting, so the lookup answers within a small budget
(`--object-lookup-budget`, default 50 ms) whatever the store does.

Keys are chained, so a prompt's chunks are present as a leading run: a *walk* asks for the
objects' sizes in waves that grow fourfold (16, 64, 256 … concurrent HEADs, the cheapest
request a store answers) and stops at the first key that is missing or refused. A size is all
the index needs: the key already names the layout (keys are seeded with it), and every read
verifies the object's header, layout and checksum before a byte is served. Each wave's finds are handed to the store (`on_found`)
at once, so they are indexed — readable, and known to every later lookup — as soon as they are
known. When the budget runs out the lookup answers with what is indexed by then, and the walk
goes on in the background (at most `max_walks` at a time), so the next lookup of that prompt,
or of any prompt sharing its prefix, finds the rest locally. A second lookup of a prompt whose
walk is still running joins that walk instead of starting another.

Misses are remembered for a short time (negative cache) so a burst of requests with the same
new prefix does not ask the store again and again; the store forgets a key's miss as soon as it
uploads that key itself.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Callable, Protocol, Sequence

from tierd.tiers.base import Found, FoundCallback
from tierd.tiers.object.breaker import CircuitBreaker
from tierd.tiers.object.format import HEADER_BYTES

log = logging.getLogger(__name__)


class SizedTier(Protocol):
    """What a probe asks of the object tier (`ObjectTier` is one): the size of a key's object
    (one HEAD; None if absent), and its breaker, so a probe does not queue on a dead store."""

    breaker: CircuitBreaker

    async def stored_size(self, key: bytes) -> int | None: ...


class SharedTierProbe:
    """The object tier's `tierd.tiers.base.PrefixProbe` (see the module docstring)."""

    def __init__(self, tier: SizedTier, on_found: FoundCallback, *, budget: float = 0.05, first_wave: int = 16,
                 growth: int = 4, max_wave: int = 256, max_walks: int = 8, negative_ttl: float = 1.0,
                 max_negative: int = 65536, clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.on_found = on_found
        self.budget = budget
        self.first_wave = first_wave
        self.growth = growth
        self.max_wave = max_wave
        self.max_walks = max_walks
        self.negative_ttl = negative_ttl
        self.max_negative = max_negative
        self.clock = clock
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        self._walks: dict[bytes, asyncio.Task[None]] = {}
        self.probes = 0
        self.found = 0
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
        walk = self._walks.get(keys[0])
        if walk is None:
            walk = asyncio.ensure_future(self._walk(list(keys)))
            self._walks[keys[0]] = walk
            walk.add_done_callback(lambda t, k=keys[0]: self._walks.pop(k, None) if self._walks.get(k) is t else None)
        done, _ = await asyncio.wait([walk], timeout=self.budget)
        if not done:
            self.budget_exceeded += 1
            if len(self._walks) > self.max_walks:
                walk.cancel()  # too many walks behind already: this one stops here

    async def _walk(self, keys: list[bytes]) -> None:
        wave = self.first_wave
        i = 0
        while i < len(keys):
            batch = keys[i:i + wave]
            cut = next((j for j, k in enumerate(batch) if self._known_missing(k)), None)
            if cut is not None:
                self.negative_hits += 1
                batch = batch[:cut]
            results = await asyncio.gather(*(self.tier.stored_size(k) for k in batch), return_exceptions=True)
            run: list[Found] = []
            for key, r in zip(batch, results):
                if isinstance(r, BaseException):  # the store failed or timed out: unknown, not a miss
                    break
                if r is None:
                    self._remember_miss(key)
                    break
                run.append(Found(key, r - HEADER_BYTES, object_bytes=r))
            if run:
                self.found += len(run)
                self.on_found(run)
            if len(run) < len(batch) or cut is not None:
                return
            i += len(batch)
            wave = min(wave * self.growth, self.max_wave)

    async def close(self) -> None:
        """Stop the walks still running in the background."""
        for walk in list(self._walks.values()):
            walk.cancel()
        await asyncio.gather(*self._walks.values(), return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {"remote_lookups": self.probes, "remote_found": self.found,
                "remote_budget_exceeded": self.budget_exceeded, "remote_negative_hits": self.negative_hits,
                "remote_negative_cached": len(self._negative), "remote_walks": len(self._walks)}
