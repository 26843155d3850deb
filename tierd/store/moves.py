"""Who may move a chunk: this module, alone.

A *move* is anything that copies a chunk between tiers while other requests go on: demotion
(DRAM -> first lower tier, then the DRAM copy is freed), promotion (a lower tier -> DRAM), copy
down (a promoted chunk also written to NVMe), hand down (a last local copy read into the upload
queue before it is deleted), the shutdown flush, and eviction from DRAM (which writes a chunk
down first when it has no lower copy). Every one of them *claims* the chunk here first: the
claim sets `Chunk.moving` (a future the others can wait on) and records the move in
`in_flight`; a chunk already claimed is waited for, never moved twice at once. Nothing else
sets `Chunk.moving`. A claim is taken with no await between the check and the set, so two
coroutines cannot both see a chunk as free.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Coroutine, Iterator, Sequence

from tierd.errors import InternalError, ObjectTierUnavailable
from tierd.store.chunk import DRAM, Chunk
from tierd.store.dram import DramRoom
from tierd.store.index import ChunkIndex
from tierd.store.lowers import Lower
from tierd.store.uploads import Upload, UploadQueue
from tierd.store.writedown import WriteDown

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Move:
    kind: str
    ok: bool = False


class Moves:
    def __init__(self, index: ChunkIndex, dram: DramRoom, writedown: WriteDown, uploads: UploadQueue) -> None:
        self.index = index
        self.dram = dram
        self.writedown = writedown
        self.uploads = uploads
        #: key -> what is moving it right now (for `stat`, tests and the invariant checks)
        self.in_flight: dict[bytes, str] = {}
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def first(self) -> Lower | None:
        return self.index.lowers[0] if self.index.lowers else None

    @contextmanager
    def _claim(self, c: Chunk, kind: str) -> Iterator[Move]:
        if c.moving is not None or c.key in self.in_flight:
            raise InternalError(f"chunk {c.key.hex()}: {kind} while {self.in_flight.get(c.key, 'a move')} is in flight")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        c.moving = fut
        self.in_flight[c.key] = kind
        move = Move(kind)
        try:
            yield move
        finally:
            c.moving = None
            if self.in_flight.get(c.key) == kind:
                del self.in_flight[c.key]
            fut.set_result(move.ok)

    @staticmethod
    async def settled(c: Chunk) -> None:
        """Wait until no move of `c` is in flight."""
        while c.moving is not None:
            await asyncio.shield(c.moving)

    async def wait_all(self) -> None:
        """Wait for every move and background copy in flight (at shutdown)."""
        pending = [c.moving for c in self.index.values() if c.moving is not None]
        await asyncio.gather(*pending, *self._background, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ DRAM -> below

    async def _write_down(self, c: Chunk, kind: str) -> bool:
        """Write `c`'s DRAM copy to the first lower tier under a claim, keeping the DRAM copy.
        True once `c` has a copy there (or there is no lower tier)."""
        await self.settled(c)
        first = self.first
        if first is None or first.name in c.lower:
            return True
        if c.slot is None:
            return False
        with self._claim(c, kind) as move:
            move.ok = await self.writedown.write(c, first, self.dram.view(c))
        return move.ok

    async def demote(self, c: Chunk) -> bool:
        """Write a DRAM chunk to the first lower tier and free its slot once the copy is durable
        (unless it is held). False if the write failed."""
        if self.first is None or c.slot is None:
            return True
        if not await self.write_back(c):
            return False
        if c.slot is not None and c.evictable():
            self.dram.drop(c)
        return True

    async def write_back(self, c: Chunk) -> bool:
        """Write a DRAM chunk to the first lower tier, keeping its DRAM copy (clean now: it can
        be dropped at once when room is needed). False if the write failed."""
        if self.first is None or c.slot is None:
            return True
        ok = await self._write_down(c, "demote")
        if c.slot is None:
            return True  # another move took it out of DRAM meanwhile
        if not ok:
            return False
        self.dram.stats.demotions += 1
        if self.dram.room_waiters:
            self.dram.space_freed.set()  # clean now: a put waiting for room can drop it
        return True

    async def copy_down(self, c: Chunk) -> None:
        """Write a promoted chunk to the first lower tier as well, keeping its DRAM copy."""
        if c.slot is not None and c.moving is None and self.index.get(c.key) is c:
            await self._write_down(c, "copy down")

    async def flush(self, batch: int) -> None:
        """Write every DRAM-only chunk down (graceful shutdown), so a restart serves it."""
        if self.first is None:
            return
        dirty = [c for c in map(self.index.__getitem__, self.dram.policy.candidates())
                 if not self.index.written_down(c) and not c.declined]
        for i in range(0, len(dirty), batch):
            await asyncio.gather(*(self._write_down(c, "flush") for c in dirty[i : i + batch]))

    async def quota_room(self, namespace: str, nbytes: int) -> bool:
        """Make `nbytes` of room in DRAM within `namespace`'s quota from its own chunks, in
        eviction order (written down first where they have no lower copy). False when the
        namespace has nothing that may move: the put or promotion is then not cached. Returns
        with no await after its last check, so the caller can charge the room at once."""
        quotas = self.dram.quotas
        while quotas.over(DRAM, namespace, nbytes):
            victim = next(self.dram.victims(namespace), None)
            if victim is None:
                quotas.refused += 1
                return False
            first = self.first
            if first is None or victim.key in self.index.clean or not self.writedown.admits(victim, first):
                self.dram.drop(victim)
            elif not await self.demote(victim):
                quotas.refused += 1
                return False
        return True

    # ------------------------------------------------------------------ below -> DRAM

    async def promote(self, c: Chunk, layout_id: str, chunk_bytes: int) -> bool:
        """Bring a leased chunk into DRAM if it is only on a lower tier; True once it is there."""
        while c.slot is None and c.moving is not None:
            await asyncio.shield(c.moving)
        if c.slot is not None:
            return True
        if self.index.get(c.key) is not c:
            return False
        if not c.layout_id:  # found by a lookup's HEAD: the raw size is the layout's, the read checks it
            c.size = chunk_bytes
        quotas = self.dram.quotas
        for lower in list(self.index.lowers):
            if lower.name not in c.lower:
                continue
            if not await self.quota_room(c.namespace, c.size):
                return False
            quotas.charge(DRAM, c.namespace, c.size)  # claimed before the slot is awaited
            slot = await self.dram.alloc_slot(c.size, time.monotonic() + 5.0, namespace=c.namespace or None,
                                              has_lower=True, writedown_failing=self.writedown_failing,
                                              promotion=True)
            if slot is None or c.slot is not None or c.moving is not None:
                quotas.charge(DRAM, c.namespace, -c.size)
                if slot is None:
                    return False
                # Another acquire promoted it, or started to, while this one waited for room.
                self.dram.free_slot(slot, c.size)
                return await self.promote(c, layout_id, chunk_bytes)
            with self._claim(c, "promote") as move:
                move.ok = await self._read_into(c, lower, slot, layout_id)
            if move.ok:
                first = self.first
                if first is not None and lower is not first and not first.shared and not self.index.written_down(c):
                    self._spawn(self.copy_down(c))  # an object-tier hit lands on NVMe too
                return True
        return False

    def writedown_failing(self) -> bool:
        first = self.first
        return first is not None and first.failing

    async def _read_into(self, c: Chunk, lower: Lower, slot: int, layout_id: str) -> bool:
        """Read `c` from `lower` into `slot` and place it there; on any failure free the slot."""
        namespace = c.namespace
        try:
            header = await lower.tier.read_into(c.key, self.dram.arena.view(slot, c.size),
                                                layout_id=c.layout_id or layout_id, payload_len=c.size,
                                                stored_bytes=c.lower.get(lower.name))
        except ObjectTierUnavailable as exc:  # the store is down: a miss, the copy stays known
            log.warning("reading chunk %s: %s", c.key.hex(), exc)
            self._give_back(slot, c.size, namespace)
            return False
        except Exception:  # an I/O error is a miss, never data
            log.exception("reading chunk %s from %s failed", c.key.hex(), lower.name)
            header = None
        if header is None:
            self._give_back(slot, c.size, namespace)
            lower.stats.corrupt += 1
            self.index.forget_lower_copy(c, lower)  # the tier already removed the bad copy
            return False
        if not c.layout_id:  # found by a lookup; the read verified what it is
            c.layout_id = header.layout_id
            self.dram.quotas.charge(DRAM, namespace, -c.size)
            self.dram.quotas.charge(DRAM, header.namespace, c.size)
            c.namespace = header.namespace
            slot = await self._into_own_region(c, slot)
            if slot is None:
                return False
        self.dram.place(c, slot)
        self.dram.stats.promotions += 1
        lower.stats.bytes_out += c.size
        if lower.owns(c.key) or not lower.shared:  # recency of the copies this node owns
            lower.policy.touch(c.key, c.namespace, c.position)
        return True

    async def _into_own_region(self, c: Chunk, slot: int) -> int | None:
        """A chunk read before its namespace was known landed in the shared region; a tenant's
        chunk moves to its tenant's region (`tierd.tiers.arena`), and the shared slot is zeroed
        before it is freed. None (a miss, the quota given back) when the region has no room now."""
        dram = self.dram
        region = dram.alloc.region_of(c.namespace)
        if dram.alloc.region_at(slot) == region:
            return slot
        moved = await dram.alloc_slot(c.size, time.monotonic(), namespace=c.namespace, has_lower=True,
                                      writedown_failing=self.writedown_failing, promotion=True)
        old = dram.arena.view(slot, c.size)
        if moved is not None:
            dram.arena.view(moved, c.size)[:] = old
        old[:] = bytes(c.size)
        dram.free_slot(slot, c.size)
        if moved is None:
            dram.quotas.charge(DRAM, c.namespace, -c.size)
        return moved

    def _give_back(self, slot: int, nbytes: int, namespace: str) -> None:
        self.dram.free_slot(slot, nbytes)
        self.dram.quotas.charge(DRAM, namespace, -nbytes)

    # ------------------------------------------------------------------ out of a local tier

    async def hand_down(self, c: Chunk, lower: Lower) -> None:
        """Before a local tier deletes the last local copy of a chunk the shared tier lacks, read
        it into the upload queue (write-back). Off the request path: only demotions and uploads
        make room in a lower tier."""
        if c.moving is not None:
            return  # moving elsewhere: the caller looks at it again
        buf = bytearray(c.size)
        with self._claim(c, "hand down") as move:
            try:
                move.ok = await lower.tier.read_into(c.key, memoryview(buf), layout_id=c.layout_id,
                                                     payload_len=c.size) is not None
            except Exception:
                log.exception("reading chunk %s from %s to hand it down failed", c.key.hex(), lower.name)
        if move.ok:
            self.uploads.put(Upload(c.key, c.layout_id, c.namespace, c.size, c.created, c.position, payload=buf))

    async def evict(self, chunks: Sequence[Chunk], tier: str | None) -> dict[str, int]:
        """Remove chunks from one tier (`tier`) or from all. Evicting from DRAM writes a chunk
        down first when no lower copy exists. Pinned, leased and moving chunks are skipped and
        counted."""
        result = {"evicted": 0, "pinned": 0, "busy": 0}
        movable = []
        for c in chunks:
            if c.pinned:
                result["pinned"] += 1
            elif not c.evictable():
                result["busy"] += 1
            else:
                movable.append(c)
        if tier == DRAM:
            in_dram = [c for c in movable if c.slot is not None]
            await asyncio.gather(*(self._write_down(c, "evict") for c in in_dram if not self.index.written_down(c)))
            for c in in_dram:
                if c.slot is not None and c.evictable() and self.index.written_down(c):
                    self.dram.drop(c, evicted=False)
                result["evicted"] += c.slot is None
            return result
        for c in movable:
            if not c.evictable():  # (nothing awaited since the check; kept for clarity)
                result["busy"] += 1
                continue
            if tier is not None:
                if tier not in c.lower:
                    continue
                self.writedown.delete_copy(c, self.index.lower_named(tier))
            else:
                if c.slot is not None:
                    self.dram.drop(c, evicted=False)
                for lower in self.index.lowers:
                    if lower.name in c.lower:
                        self.writedown.delete_copy(c, lower)
            result["evicted"] += 1
        return result

