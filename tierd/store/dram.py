"""DRAM room: the arena's slots, when DRAM is under pressure, and which chunk leaves DRAM.

This is where DRAM eviction happens. A chunk's DRAM copy appears (`place`) and goes (`drop`)
only here (and so the KV events of DRAM copies start here: `ChunkIndex.copy_stored` /
`copy_removed`). Dropping is immediate and only ever of a copy nobody holds; a copy that still needs
writing down first is handed to `moves` by the demoter, which frees it here once the lower copy
is durable. The order in which copies leave is the eviction policy's (`policy.candidates`).

Room is made on demand only, so no capacity sits empty: a put that finds no free slot drops
clean copies (a copy exists below, there is nothing below, or the tier below declined the
chunk) at once, in the policy's order. Where a tier lies below, the background demoter keeps
the coldest part of DRAM clean by writing it down *without* dropping it: `pressure` wakes it
when the bytes still to be written down pass the high watermark, and it works until they are
under the low one. A put that finds nothing clean waits on `space_freed` for the demoter.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterator

from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy
from tierd.store.chunk import DRAM, Chunk, TierStats
from tierd.store.index import ChunkIndex
from tierd.store.quotas import NamespaceQuotas
from tierd.tiers.allocator import RegionAllocator
from tierd.tiers.arena import SharedArena


class DramRoom:
    def __init__(self, arena: SharedArena, index: ChunkIndex, quotas: NamespaceQuotas, *,
                 high_watermark: float, low_watermark: float, policy: EvictionPolicy | None = None) -> None:
        self.arena = arena
        self.alloc = RegionAllocator([(r.namespace, r.base, r.size) for r in arena.regions])
        self.stats = TierStats(DRAM, self.alloc.size)
        self.index = index
        self.quotas = quotas
        self.policy = policy if policy is not None else LRUPolicy()
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        #: Set when DRAM is over the high watermark or a put waits for room: wakes the demoter.
        self.pressure = asyncio.Event()
        #: Set whenever a slot is freed: wakes puts and promotions waiting for room.
        self.space_freed = asyncio.Event()
        self.room_waiters = 0
        self.closing = False
        #: DRAM-only chunks dropped to make room for a promotion while write-downs were failing.
        self.dropped_unwritten = 0

    # ------------------------------------------------------------------ copies in and out

    def view(self, c: Chunk) -> memoryview:
        assert c.slot is not None
        return self.arena.view(c.slot, c.size)

    def place(self, c: Chunk, slot: int) -> None:
        """`c`'s bytes are in `slot` now (a commit or a promotion). The caller charged its quota."""
        c.slot = slot
        self.index.retier(c)
        self.index.copy_stored(c, DRAM)
        self.policy.touch(c.key, c.namespace, c.position)
        self.stats.chunks += 1
        self.stats.bytes_in += c.size
        self.check_pressure()

    def touch(self, c: Chunk) -> None:
        """A hit: `c` is the most recently used copy now, and worth writing down after all if the
        tier below had declined it."""
        self.policy.touch(c.key, c.namespace, c.position)
        if c.declined:
            c.declined = False
            self.index.retier(c)
        self.stats.bytes_out += c.size

    def drop(self, c: Chunk, *, evicted: bool = True) -> None:
        """Free `c`'s DRAM copy (the caller checked nobody holds it and that it may go)."""
        assert c.slot is not None
        self.free_slot(c.slot, c.size)
        self.quotas.charge(DRAM, c.namespace, -c.size)
        c.slot = None
        self.index.retier(c)
        self.index.copy_removed(c, DRAM)
        self.policy.remove(c.key)
        self.stats.chunks -= 1
        if evicted:
            self.stats.evictions += 1
            lowers = self.index.lowers
            if lowers and lowers[0].name in c.lower:  # its departure, for filters that learn from reuse
                lowers[0].admission.admits(c.key, c.hits, depth=c.position, stored=True)
        self.index.unindex_if_gone(c)

    def free_slot(self, slot: int, nbytes: int) -> None:
        self.alloc.free(slot, nbytes)
        self.space_freed.set()

    # ------------------------------------------------------------------ which chunk leaves

    def victims(self, namespace: str | None = None) -> Iterator[Chunk]:
        """DRAM chunks nobody holds (of `namespace`, or all), in the order the policy evicts them."""
        return (c for c in map(self.index.__getitem__, self.policy.candidates(namespace)) if c.evictable())

    def region_victims(self, region: int) -> Iterator[Chunk]:
        """`victims()` whose slots lie in arena region `region` (a tenant's region holds only its
        namespace's chunks; the shared one everyone else's)."""
        namespace = self.arena.regions[region].namespace
        if namespace is not None:
            return self.victims(namespace)
        if len(self.arena.regions) == 1:
            return self.victims()
        at = self.alloc.region_at
        return (c for c in self.victims() if at(c.slot) == region)  # type: ignore[arg-type]

    def drop_clean(self, nbytes: int, region: int = 0) -> bool:
        """Drop clean DRAM copies of `region` in the policy's order until `nbytes` fit there. True
        if any was freed. The walk passes dirty copies; the demoter keeps the cold end clean, so it
        is short."""
        freed = False
        clean = self.index.clean
        while clean and self.alloc.largest_free(region) < self.alloc.rounded(nbytes):
            c = next((c for c in self.region_victims(region) if c.key in clean), None)
            if c is None:
                break
            self.drop(c)
            freed = True
        return freed

    def drop_one_unwritten(self, region: int = 0) -> bool:
        """Drop the first victim of `region`, written down or not (only while write-downs fail, for
        a promotion: a hit is worth more than an older chunk that cannot be written down anyway)."""
        victim = next(self.region_victims(region), None)
        if victim is None:
            return False
        self.drop(victim)
        self.dropped_unwritten += 1
        return True

    def has_demotable(self) -> bool:
        """Whether waiting can make room: some DRAM chunk may be written down, or is being."""
        return any(c.evictable() or c.moving is not None
                   for c in map(self.index.__getitem__, self.policy.candidates()))

    # ------------------------------------------------------------------ room and pressure

    def dirty_bytes(self) -> int:
        """DRAM bytes that must be written down before they can be dropped (reservations count)."""
        return self.index.dirty_bytes(self.alloc.used)

    def excess(self) -> float:
        """Bytes still to write down to get under the low watermark (at least 1 while someone
        waits for room)."""
        excess = self.dirty_bytes() - self.low_watermark * self.alloc.size
        return max(excess, 1) if self.room_waiters else excess

    def check_pressure(self) -> None:
        """Wake the demoter if the bytes still to write down passed the high watermark. With no
        tier below there is nothing to write: room is made on demand, when a put needs it."""
        if self.index.lowers and self.dirty_bytes() > self.high_watermark * self.alloc.size:
            self.pressure.set()

    async def alloc_slot(self, nbytes: int, deadline: float, *, namespace: str | None, has_lower: bool,
                         writedown_failing: Callable[[], bool], promotion: bool = False) -> int | None:
        """A free slot in `namespace`'s region of the arena, making room if needed: drop clean
        copies at once, else wait for the demoter to write dirty ones down. None if no room
        appears before the deadline, or at once while write-downs fail (a full disk: a miss now,
        not after the deadline)."""
        region = self.alloc.region_of(namespace)
        while True:
            slot = self.alloc.alloc(nbytes, region)
            if slot is not None:
                self.check_pressure()
                return slot
            if self.drop_clean(nbytes, region):
                continue
            if promotion and writedown_failing() and self.drop_one_unwritten(region):
                continue  # the lower tier takes nothing: serve the hit, DRAM acts as plain LRU
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closing or not has_lower or not self.has_demotable() or writedown_failing():
                return None
            self.room_waiters += 1
            self.space_freed.clear()
            self.pressure.set()
            try:
                await asyncio.wait_for(self.space_freed.wait(), remaining)
            except asyncio.TimeoutError:
                return None
            finally:
                self.room_waiters -= 1
