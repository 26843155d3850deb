"""How far does a locally missing prefix continue in the shared object tier?

Other nodes upload chunks this node has never seen, so a lookup that misses locally asks the
object tier — but the engine's scheduler is waiting, so it must answer within a small budget
(`--object-lookup-budget`, default 50 ms) whatever the store does. Keys are chained, so a
prompt's chunks are present as a leading run: the probe reads object headers in waves that
double in size (8, 16, 32, … concurrent ranged GETs), and stops at the first key that is
missing, unanswered when the budget runs out, or refused. A prompt that misses everywhere costs
one wave; a 512-chunk hit costs about seven round trips.

Found objects come back as verified headers (the store indexes them as chunks this node did
not write). Misses are remembered for a short time (negative cache) so a burst of requests
with the same new prefix does not ask the store again and again; the store forgets a key's
miss as soon as it uploads that key itself.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Callable, Sequence

from tierd.tiers.object_format import ObjectHeader
from tierd.tiers.object_store import ObjectTier


class SharedTierProbe:
    def __init__(self, tier: ObjectTier, *, budget: float = 0.05, first_wave: int = 8, max_wave: int = 128,
                 negative_ttl: float = 1.0, max_negative: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tier = tier
        self.budget = budget
        self.first_wave = first_wave
        self.max_wave = max_wave
        self.negative_ttl = negative_ttl
        self.max_negative = max_negative
        self.clock = clock
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        self.probes = 0
        self.found = 0
        self.budget_exceeded = 0
        self.negative_hits = 0

    def forget_miss(self, key: bytes) -> None:
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

    async def leading(self, keys: Sequence[bytes]) -> list[ObjectHeader]:
        """Headers of the leading run of `keys` present in the object tier, found within the budget."""
        if not keys or not self.tier.breaker.would_allow():
            return []
        self.probes += 1
        deadline = self.clock() + self.budget
        found: list[ObjectHeader] = []
        wave = self.first_wave
        i = 0
        while i < len(keys):
            batch = list(keys[i:i + wave])
            cut = next((j for j, k in enumerate(batch) if self._known_missing(k)), None)
            if cut is not None:
                self.negative_hits += 1
                batch = batch[:cut]
            tasks = [asyncio.ensure_future(self.tier.read_header(k)) for k in batch]
            stop = cut is not None
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - self.clock()))
                for t in pending:
                    t.cancel()
                if pending:
                    self.budget_exceeded += 1
                for key, t in zip(batch, tasks):
                    if t not in done or t.cancelled() or t.exception() is not None:
                        stop = True  # unanswered in time, or the store failed: unknown, not a miss
                        break
                    header = t.result()
                    if header is None:
                        self._remember_miss(key)
                        stop = True
                        break
                    found.append(header)
                # collect exceptions of the tasks after the stop so none is left unretrieved
                for t in tasks:
                    if t.done() and not t.cancelled():
                        t.exception()
            if stop:
                break
            i += len(batch)
            wave = min(wave * 2, self.max_wave)
        self.found += len(found)
        return found

    def stats(self) -> dict[str, int]:
        return {"remote_lookups": self.probes, "remote_found": self.found,
                "remote_budget_exceeded": self.budget_exceeded, "remote_negative_hits": self.negative_hits,
                "remote_negative_cached": len(self._negative)}

