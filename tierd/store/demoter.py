"""The demoter: the background task that writes DRAM down while it is under pressure.

It wakes when the DRAM bytes not yet written down pass the high watermark, or a put waits for
room, and works until they are back under the low watermark: walking DRAM in eviction order,
it writes the DRAM-only chunks down (`batch` at a time) *keeping their DRAM copies*, which are
then clean: dropped only when a put needs the room (`DramRoom.drop_clean`), so DRAM stays full
of data and the cold end can be freed at once. A chunk the tier below declines (the cost
model's rule, or the tier's admission filter) is marked droppable instead. When a whole batch
fails (a full or broken disk) it marks the tier as failing and backs off, 50 ms doubling to
2 s, instead of retrying the same chunks in a tight loop; room appearing below or any success
resets it. A pass that leaves as much to write as before (a tier below too small for DRAM's
cold end, evicting copies of DRAM chunks to take new ones) ends the wake-up.
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
                dirty_before = dram.dirty_bytes()
                picked, declined = self.pick()
                if not picked and not declined:
                    break
                done: list[bool] = []
                for i in range(0, len(picked), self.batch):
                    done += await asyncio.gather(*(self.moves.write_back(c) for c in picked[i : i + self.batch]))
                if picked and not any(done) and not declined:
                    backoff = min(2.0, max(0.05, backoff * 2))
                    self.state = "backing off"
                    await self._back_off(backoff)
                    self.state = "working"
                else:
                    backoff = 0.0
                    if self.index.lowers:
                        self.index.lowers[0].failing = False
                    if not declined and dram.dirty_bytes() >= dirty_before and not dram.room_waiters:
                        break  # a tier below smaller than DRAM's cold end evicts what it just took: wait for the next wake

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
        """Walk DRAM's victims in eviction order, past the clean ones, choosing DRAM-only chunks
        to write down (up to 16 batches) until enough is chosen to reach the low watermark; a
        chunk the tier below declines is marked droppable instead. The walk stops there, so it
        costs the chunks it passes, not the whole tier. Returns (chunks to write down, whether
        any was declined)."""
        excess = self.dram.excess()
        first = self.index.lowers[0] if self.index.lowers else None
        if excess <= 0 or first is None:
            return [], False
        clean = self.index.clean
        picked: list[Chunk] = []
        declined: list[Chunk] = []
        for c in self.dram.victims():
            if c.key in clean:
                continue
            if self.writedown.admits(c, first):
                picked.append(c)
            else:
                declined.append(c)
            excess -= c.size
            if len(picked) >= 16 * self.batch or excess <= 0:
                break
        for c in declined:  # (after the walk: this changes what the walk iterates)
            c.declined = True
            self.index.retier(c)
        if declined:
            self.dram.space_freed.set()  # droppable now: a put waiting for room can take it
        return picked, bool(declined)
