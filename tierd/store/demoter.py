"""The demoter: the background task that writes DRAM down while it is under pressure.

It wakes when DRAM goes over the high watermark or a put waits for room, and works until DRAM
is back under the low watermark: walking DRAM in eviction order, it drops copies that already
have a lower copy (or that the admission rule says could never pay to reload) and hands up to
`batch` DRAM-only ones at a time to `moves.demote`. When a whole batch fails (a full or broken
disk) it marks the tier as failing and backs off, 50 ms doubling to 2 s, instead of retrying
the same chunks in a tight loop; room appearing below or any success resets it.
"""
from __future__ import annotations

import asyncio
import logging

from tierd.store.chunk import Chunk
from tierd.store.dram import DramRoom
from tierd.store.index import ChunkIndex
from tierd.store.moves import Moves
from tierd.store.writedown import WriteDown

log = logging.getLogger(__name__)


class Demoter:
    def __init__(self, index: ChunkIndex, dram: DramRoom, moves: Moves, writedown: WriteDown, *, batch: int) -> None:
        self.index = index
        self.dram = dram
        self.moves = moves
        self.writedown = writedown
        self.batch = batch
        #: "waiting" (for pressure), "working" (moves of its may be under way or about to start),
        #: or "backing off" (its last batch all failed); for `stat` and tests that wait for quiet.
        self.state = "waiting"

    async def run(self) -> None:
        """The loop (the store runs it supervised); returns when the store closes."""
        backoff = 0.0
        dram = self.dram
        if dram.excess() > 0:  # restarted after dying mid-work: the wake-up it took is gone with it,
            dram.pressure.set()  # and a put waiting for room would otherwise wait out its deadline
        while True:
            self.state = "waiting"
            await dram.pressure.wait()
            dram.pressure.clear()
            if dram.closing:
                return
            self.state = "working"
            while not dram.closing and dram.excess() > 0:
                batch, dropped = self.pick()
                if not batch and not dropped:
                    break
                done = await asyncio.gather(*(self.moves.demote(c) for c in batch))
                if batch and not any(done) and not dropped:
                    backoff = min(2.0, max(0.05, backoff * 2))
                    self.state = "backing off"
                    await self._back_off(backoff)
                    self.state = "working"
                else:
                    backoff = 0.0
                    if self.index.lowers:
                        self.index.lowers[0].failing = False

    async def _back_off(self, seconds: float) -> None:
        first = self.index.lowers[0]
        first.failing = True
        self.dram.space_freed.set()  # puts waiting for room: no room is coming, miss now
        log.warning("writing DRAM chunks down to %s failed; retrying in %.2f s", first.name, seconds)
        first.room_freed.clear()
        try:  # retry sooner if room appears below (an eviction, a deletion)
            await asyncio.wait_for(first.room_freed.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def pick(self) -> tuple[list[Chunk], bool]:
        """Walk DRAM's victims in eviction order: drop those that may go at once, choose up to
        `batch` DRAM-only ones to write down, until enough is on its way out to reach the low
        watermark. The walk stops there, so it costs the chunks it passes, not the whole tier.
        Returns (chunks to demote, whether anything was dropped)."""
        excess = self.dram.excess()
        if excess <= 0:
            return [], False
        first = self.index.lowers[0] if self.index.lowers else None
        batch: list[Chunk] = []
        drop: list[Chunk] = []
        for c in self.dram.victims():
            if first is None or self.index.written_down(c) or not self.writedown.admits(c, first):
                drop.append(c)
            else:
                batch.append(c)
            excess -= c.size
            if len(batch) >= self.batch or excess <= 0:
                break
        for c in drop:
            self.dram.drop(c)
        return batch, bool(drop)
