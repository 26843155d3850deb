"""A chunk written to a lower tier: the tier's own room and quota, admission, and deletions.

This is where a chunk is written to NVMe (or uploaded to the object tier). A write first
claims its room: it evicts from the tier until the copy fits its capacity and its namespace's
quota there, then charges both *before* the first await, so concurrent writes can never
together exceed either. A failed write gives the room back.

Evicting from a local tier deletes the copy in the background (nobody reads it once it is
forgotten); before the last local copy of a chunk the shared tier lacks is deleted, it is
handed down to the upload queue (write-back) through `moves`, which the store passes in.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Awaitable, Callable

from tierd.errors import CapacityError, ObjectTierUnavailable
from tierd.store.chunk import Chunk
from tierd.store.index import ChunkIndex
from tierd.store.lowers import Lower
from tierd.store.quotas import NamespaceQuotas

log = logging.getLogger(__name__)

#: May this chunk be written to this lower tier? (the cost model's admission rule)
Admission = Callable[[Chunk, str], bool]
#: Reads a chunk's last local copy into the upload queue before it is deleted.
HandDown = Callable[[Chunk, Lower], Awaitable[None]]


class WriteDown:
    def __init__(self, index: ChunkIndex, quotas: NamespaceQuotas) -> None:
        self.index = index
        self.quotas = quotas
        #: Set by the store once `moves` exists (it sits above this module).
        self.hand_down: HandDown | None = None
        #: Admission rule; None admits everything. A refused chunk is dropped from DRAM instead
        #: of demoted (its reload could never pay).
        self.admission: Admission | None = None
        self.rejected = 0
        #: Deletions in flight by key: a write of the same key waits for its deletion first.
        self.deleting: dict[bytes, asyncio.Future[int]] = {}
        #: Deletions in flight by tier name: their room is already handed out (`forget_lower_copy`
        #: released it), so a write to a local tier waits for them before its file appears.
        self._deleting_on: dict[str, set[asyncio.Future[int]]] = {}
        #: Called after a write to the shared tier lands (the prefix probe forgets its miss).
        self.on_shared_write: Callable[[bytes], None] | None = None

    def admits(self, c: Chunk, lower: Lower) -> bool:
        """Whether `c`, leaving DRAM, is worth a copy on `lower`: the cost model's rule (its
        reload must be able to pay), then the tier's own admission filter (e.g. used twice)."""
        if self.admission is not None and not self.admission(c, lower.name):
            self.rejected += 1
            return False
        return lower.admission.admits(c.key, c.hits, depth=c.position)

    async def write(self, c: Chunk, lower: Lower, payload: memoryview, *, raise_unavailable: bool = False) -> bool:
        """Write `c` to `lower` and index the copy. False if it did not fit or the write failed;
        with `raise_unavailable`, an unreachable tier raises instead (uploads retry later)."""
        if lower.name in c.lower:
            return True
        need = lower.tier.stored_bytes(c.size)
        if not await self.make_room(lower, need, c.namespace):
            return False
        charged = not lower.shared
        self._charge(lower, c.namespace, need, charged)  # claimed now: no await since make_room checked
        pending = self._deletions_before(lower, c.key)
        try:
            if pending:
                await asyncio.wait(pending)
            stored = await lower.tier.write(c.key, c.layout_id, c.namespace, payload)
        except ObjectTierUnavailable as exc:
            self._charge(lower, c.namespace, -need, charged)
            if raise_unavailable:
                raise
            log.warning("writing chunk %s to %s: %s", c.key.hex(), lower.name, exc)
            return False
        except (CapacityError, OSError) as exc:  # a full or failing disk: one line, no traceback
            self._charge(lower, c.namespace, -need, charged)
            log.warning("writing chunk %s to %s failed: %s", c.key.hex(), lower.name, exc)
            return False
        except Exception:  # a bug or an unexpected failure of the medium: a failed write, logged
            self._charge(lower, c.namespace, -need, charged)
            log.exception("writing chunk %s to %s failed", c.key.hex(), lower.name)
            return False
        except BaseException:  # cancelled: give the room back
            self._charge(lower, c.namespace, -need, charged)
            raise
        owned = stored > 0  # 0: a shared tier already held it (another node wrote it)
        self._charge(lower, c.namespace, (stored if owned else 0) - need, charged)
        if owned and lower.owns(c.key) and lower.name in c.lower:  # indexed meanwhile as ours: not twice
            self._charge(lower, c.namespace, -c.lower[lower.name], charged)
        self.index.add_lower_copy(c, lower, stored if owned else need, owned=owned)
        lower.stats.bytes_in += c.size
        if lower.shared and self.on_shared_write is not None:
            self.on_shared_write(c.key)
        return True

    def _deletions_before(self, lower: Lower, key: bytes) -> set[asyncio.Future[int]]:
        """What a write must wait for before it writes: a deletion of the same key (on any tier),
        and on a local tier every deletion under way there when the write claimed its room.
        The room of a copy is released when the copy is forgotten, before its file is gone; a
        write that did not wait could put the files on disk over the tier's capacity or a
        namespace's quota for as long as a deletion takes."""
        pending = set() if lower.shared else set(self._deleting_on.get(lower.name, ()))
        same_key = self.deleting.get(key)
        if same_key is not None:
            pending.add(same_key)
        return pending

    def _charge(self, lower: Lower, namespace: str, nbytes: int, quota: bool) -> None:
        lower.stats.used_bytes += nbytes
        if quota:
            self.quotas.charge(lower.name, namespace, nbytes)

    async def make_room(self, lower: Lower, need: int, namespace: str = "") -> bool:
        """Evict from `lower` until `need` more bytes fit: the namespace's own first victims while
        it is at its quota on this tier, else the tier's. Returns with no await after its last
        check, so the caller can claim the room before anyone else looks.

        On the first lower tier, a copy whose chunk is also in DRAM is the victim only when no
        other copy may go: it is what lets DRAM drop that chunk at once, and evicting it sends
        the demoter to write the same chunk again."""
        cap = lower.stats.capacity_bytes
        backs_dram = bool(self.index.lowers) and lower is self.index.lowers[0]
        if need > cap:
            return False
        while True:
            own = not lower.shared and self.quotas.over(lower.name, namespace, need)
            if not own and lower.stats.used_bytes + need <= cap:
                return True
            victim = self._victim(lower, namespace if own else None, backs_dram)
            if victim is None:
                if own:
                    self.quotas.refused += 1
                return False
            below = self._below(lower)
            if (below is not None and below.shared and below.name not in victim.lower and self.hand_down
                    and below.admission.admits(victim.key, victim.hits, depth=victim.position)):
                await self.hand_down(victim, lower)
                if lower.name not in victim.lower or not victim.evictable():
                    continue  # it changed while we read it; look again
            self.delete_copy(victim, lower)
            lower.stats.evictions += 1

    def _victim(self, lower: Lower, namespace: str | None, backs_dram: bool) -> Chunk | None:
        """The first copy on `lower` (of `namespace`, or any) that may go, preferring, where
        `backs_dram`, one whose chunk is not also in DRAM."""
        fallback = None
        for c in map(self.index.__getitem__, lower.policy.candidates(namespace)):
            if not c.evictable():
                continue
            if not backs_dram or c.slot is None:
                return c
            fallback = fallback or c
        return fallback

    def _below(self, lower: Lower) -> Lower | None:
        lowers = self.index.lowers
        i = lowers.index(lower)
        return lowers[i + 1] if i + 1 < len(lowers) else None

    def delete_copy(self, c: Chunk, lower: Lower) -> None:
        """Forget the copy now (so nobody reads it) and delete it in the background. Another
        node's object in a shared tier is only forgotten: it is not ours to delete."""
        owned = lower.owns(c.key)
        self.index.forget_lower_copy(c, lower)
        if not owned:
            return
        fut = asyncio.ensure_future(lower.tier.delete(c.key))
        self.deleting[c.key] = fut
        self._deleting_on.setdefault(lower.name, set()).add(fut)
        fut.add_done_callback(functools.partial(self._deleted, c.key, lower.name))

    def _deleted(self, key: bytes, tier: str, fut: asyncio.Future[int]) -> None:
        if self.deleting.get(key) is fut:
            del self.deleting[key]
        self._deleting_on[tier].discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("deleting chunk %s failed: %s", key.hex(), fut.exception())

    async def drain(self) -> None:
        """Wait for the deletions in flight (at shutdown)."""
        pending = set().union(*self._deleting_on.values())
        if pending:
            await asyncio.wait(pending)
