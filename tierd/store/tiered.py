"""`TieredStore`: the parts of the store put together, and the one API the daemon and embedded
mode both call. Each method here only checks its arguments and hands over to the part that
owns the work (see the package docstring for who owns what)."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tierd.errors import InvalidArgumentError, UnknownLayoutError, shown
from tierd.layout import Layout
from tierd.policies.admission import Admission
import tierd.store.persist as persist
import tierd.store.report as report
from tierd.store.chunk import DRAM, Chunk, Session, TierStats, check_keys
from tierd.store.demoter import Demoter
from tierd.store.dram import DramRoom
from tierd.store.index import ChunkIndex
from tierd.store.lookup import LookupObserver, Lookups
from tierd.store.lowers import Lower, PolicyFactory, build_lowers
from tierd.store.moves import Moves
from tierd.store.quarantine import FILE_NAME as QUARANTINE_FILE, Quarantine
from tierd.store.quotas import NamespaceQuotas
from tierd.store.sessions import Sessions
from tierd.store.uploads import Uploader, UploadQueue
from tierd.store.verify import Verifier
from tierd.store.writedown import Admission, WriteDown
from tierd.supervise import Supervised, supervise
from tierd.tiers.arena import SharedArena
from tierd.tiers.base import LowerTier

if TYPE_CHECKING:
    from tierd.cost.tiers import TierCost
    from tierd.events.feed import EventFeed

log = logging.getLogger(__name__)


class TieredStore:
    """The cache: DRAM arena + lower tiers, with leases, reservations, pins and eviction."""

    def __init__(
        self,
        *,
        dram_bytes: int,
        lower_tiers: Sequence[tuple[LowerTier, int]] = (),
        io_threads: int = 4,
        high_watermark: float = 0.95,
        low_watermark: float = 0.85,
        meta_dir: str | os.PathLike[str] | None = None,
        arena_dir: Path | None = None,
        object_write: str = "through",
        upload_queue_bytes: int = 1 << 30,
        lookup_budget: float = 0.05,
        quotas: dict[str, int] | None = None,
        policies: dict[str, PolicyFactory] | None = None,
        admissions: dict[str, Callable[[], Admission]] | None = None,
        slot_check: bool = True,
        quarantine_after: int = 3,
        tenants: Sequence[str] = (),
    ) -> None:
        if object_write not in ("through", "back"):
            raise InvalidArgumentError(f"object_write {object_write!r}: use 'through' or 'back'")
        policies = policies or {}
        self.lower: list[Lower] = build_lowers(lower_tiers, policies, admissions)
        #: The arena: a shared region, and one region per tenant (a namespace bound to a user) that
        #: only that tenant's connections receive; a tenant's region is its DRAM quota if it has one.
        self.arena = SharedArena(dram_bytes, **({"directory": arena_dir} if arena_dir else {}),
                                 tenants={ns: (quotas or {}).get(ns) for ns in tenants})
        #: Per-namespace byte limits on DRAM and the local lower tiers.
        self.quotas = NamespaceQuotas(quotas)
        self.layouts: dict[str, Layout] = {}
        for lower in self.lower:  # codecs encode and decode with the layouts registered here
            lower.tier.use_layouts(self.layouts)
        self.index = ChunkIndex(self.lower, self.quotas)
        self.dram_room = DramRoom(self.arena, self.index, self.quotas, high_watermark=high_watermark,
                                  low_watermark=low_watermark,
                                  policy=policies[DRAM]() if DRAM in policies else None)
        self.writedown = WriteDown(self.index, self.quotas)
        self.uploads = UploadQueue(upload_queue_bytes)
        self.moves = Moves(self.index, self.dram_room, self.writedown, self.uploads)
        self.writedown.hand_down = self.moves.hand_down
        #: The shared object tier, if any (always the last): uploads, prefix probes.
        self.shared = self.lower[-1] if self.lower and self.lower[-1].shared else None
        self.object_write = object_write
        self.probe = None
        self.uploader: Uploader | None = None
        if self.shared is not None:
            self.probe = self.shared.tier.prefix_probe(self._index_found, budget=lookup_budget)
            self.uploader = Uploader(self.uploads, self.index, self.dram_room, self.writedown, self.shared)
            if self.probe is not None:
                self.writedown.on_shared_write = self.probe.forget_miss
        self.sessions = Sessions(self.index, self.dram_room, self.moves, self.uploads, self.layouts,
                                 write_through=object_write == "through", slot_check=slot_check)
        self.sessions.on_promoted = self._observe_promotion
        self.lookups = Lookups(self.index, [self.dram_room.stats] + [l.stats for l in self.lower], self.probe)
        self.demoter = Demoter(self.index, self.dram_room, self.moves, self.writedown, batch=io_threads)
        self.meta_dir = Path(meta_dir) if meta_dir else None
        #: The live canary (`verify`) and the tiers it quarantined.
        self.quarantine = Quarantine(self.tier_names, quarantine_after,
                                     self.meta_dir / QUARANTINE_FILE if self.meta_dir else None)
        self.verifier = Verifier(self.index, self.dram_room, self.moves, self.layouts, self.quarantine,
                                 slot_check=slot_check)
        self.sessions.verifier, self.sessions.quarantine = self.verifier, self.quarantine
        self.lookups.quarantine = self.quarantine
        #: Per-tier load costs (set by the daemon); promotions refine them online.
        self.costs: dict[str, "TierCost"] = {}
        self._io_threads = io_threads
        self._tasks: list[Supervised] = []

    # ------------------------------------------------------------------ the parts' public state

    @property
    def alloc(self) -> Any:
        return self.dram_room.alloc

    @property
    def dram(self) -> TierStats:
        return self.dram_room.stats

    @property
    def reserved(self) -> dict[bytes, Any]:
        return self.index.reserved

    @property
    def observers(self) -> list[LookupObserver]:
        return self.lookups.observers

    @property
    def admission(self) -> Admission | None:
        return self.writedown.admission

    @admission.setter
    def admission(self, rule: Admission | None) -> None:
        self.writedown.admission = rule

    @property
    def events(self) -> "EventFeed | None":
        """Where copies coming and going are published (`tierd.events`); None: nowhere. Set
        before `start()`, so the copies found at start are announced; closed by `close()`."""
        return self.index.events

    @events.setter
    def events(self, feed: "EventFeed | None") -> None:
        self.index.events = feed

    @property
    def writedown_failing(self) -> bool:
        return self.moves.writedown_failing()

    @property
    def uploads_in_flight(self) -> int:
        """Uploads to the shared tier under way right now (not counting the queued ones)."""
        return self.uploader.in_flight if self.uploader is not None else 0

    @property
    def tier_names(self) -> list[str]:
        """Tier names by tier code."""
        return [DRAM] + [l.name for l in self.lower]

    def background_alive(self) -> bool:
        """Whether every background task (demoter, upload workers) is running."""
        return all(t.alive() for t in self._tasks)

    def background_restarts(self) -> int:
        return sum(t.restarts for t in self._tasks)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Rebuild lower-tier indexes from their media and start the background tasks."""
        meta = persist.load_meta(self.meta_dir)
        if self.events is not None:  # a subscriber forgets what this node said before its restart
            self.events.cleared()
        if self.shared is not None:
            await self.shared.tier.check()
        for lower in self.lower:
            if lower.shared:
                persist.restore_owned(self.index, lower, meta)
            else:
                await persist.restore_local(self.index, lower, meta)
        self._tasks.append(supervise("tierd-demoter", self.demoter.run))
        if self.uploader is not None:
            self._tasks += [supervise(f"tierd-upload-{i}", self.uploader.work) for i in range(self._io_threads)]

    async def close(self, *, flush: bool = True, flush_timeout: float = 60.0) -> None:
        """Stop: optionally write DRAM-only chunks down, persist metadata, free the arena."""
        for session in list(self.sessions.open.values()):
            self.sessions.close_session(session)
        if flush and self.lower:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.moves.flush(self._io_threads), flush_timeout)
            except asyncio.TimeoutError:
                log.warning("flush of DRAM to %s timed out after %.0fs", self.lower[0].name, flush_timeout)
            if self.uploader is not None:
                await self.uploader.drain(max(0.0, flush_timeout - (time.monotonic() - started)))
        if self.probe is not None:
            await self.probe.close()
        self.dram_room.closing = True
        self.dram_room.pressure.set()
        uploaders = [t for t in self._tasks if t.name.startswith("tierd-upload")]
        for t in uploaders:
            t.cancel()
        await asyncio.gather(*(t.task for t in self._tasks), return_exceptions=True)
        await self.moves.wait_all()
        await self.writedown.drain()
        persist.save_meta(self.meta_dir, self.index)
        for lower in self.lower:
            await lower.tier.close()
        if self.events is not None:  # the last batches go out: this node's own copies are gone with it
            self.index.announce_local_gone()
            self.events.close()
        self.index.clear()
        self.index.lineage.clear()
        self.arena.close()

    # ------------------------------------------------------------------ sessions and layouts

    def open_session(self, name: str = "") -> Session:
        return self.sessions.open_session(name)

    def close_session(self, session: Session) -> None:
        self.sessions.close_session(session)

    def register_layout(self, layout: Layout) -> str:
        if layout.chunk_bytes > self.alloc.size:
            raise InvalidArgumentError(
                f"layout {layout.layout_id}: a chunk of {layout.chunk_bytes} bytes does not fit in the "
                f"{self.alloc.size}-byte DRAM arena; use smaller chunks or a larger --dram"
            )
        self.layouts[layout.layout_id] = layout
        return layout.layout_id

    def layout(self, layout_id: str) -> Layout:
        try:
            return self.layouts[layout_id]
        except (KeyError, TypeError):
            raise UnknownLayoutError(
                f"layout {shown(layout_id)} is not registered with this daemon; register it first (hello/register_layout)"
            ) from None

    # ------------------------------------------------------------------ the data path

    def lookup(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """How many leading chunks are present locally, and the tier code of each key
        (`tier_names` maps codes to names; ABSENT = not stored)."""
        return self.lookups.lookup(keys)

    async def lookup_async(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """`lookup`, then how far the run continues on the shared tier (within the budget)."""
        return await self.lookups.lookup_async(keys)

    async def reserve(self, session: Session, layout_id: str, namespace: str, keys: Sequence[bytes], nbytes: int,
                      *, first_position: int = 0, timeout: float = 5.0, tokens: Sequence[Sequence[int]] | None = None,
                      parent: bytes | None = None) -> list[int | None]:
        """Slots to write the missing keys into (see `Sessions.reserve`). `first_position` is
        the chunk index of keys[0] in its prompt (used by admission); `tokens` each key's token
        ids and `parent` the key before keys[0] (for KV events)."""
        return await self.sessions.reserve(session, self.layout(layout_id), namespace, keys, nbytes,
                                           first_position=first_position, timeout=timeout, tokens=tokens,
                                           parent=parent)

    def commit(self, session: Session, keys: Sequence[bytes]) -> int:
        return self.sessions.commit(session, keys)

    def abort(self, session: Session, keys: Sequence[bytes]) -> int:
        return self.sessions.abort(session, keys)

    async def acquire(self, session: Session, layout_id: str, keys: Sequence[bytes], *,
                      prefix_only: bool = True) -> tuple[int, list[int | None]]:
        return await self.sessions.acquire(session, self.layout(layout_id), keys, prefix_only=prefix_only)

    def release(self, session: Session, lease_id: int) -> int:
        return self.sessions.release(session, lease_id)

    # ------------------------------------------------------------------ the live canary

    async def verify_reserve(self, session: Session, layout_id: str, keys: Sequence[bytes], nbytes: int,
                             mask: Sequence[bool] | None = None) -> list[int | None]:
        """Scratch slots for fresh KV of stored keys (see `Verifier.reserve`)."""
        return await self.verifier.reserve(session, self.layout(layout_id), keys, nbytes, mask)

    async def verify_commit(self, session: Session, keys: Sequence[bytes], tolerance: float = 0.0) -> dict[str, Any]:
        """Compare the scratch slots with the stored copies (see `Verifier.commit`)."""
        return await self.verifier.commit(session, keys, tolerance)

    def verify_abort(self, session: Session, keys: Sequence[bytes]) -> int:
        return self.verifier.abort(session, keys)

    # ------------------------------------------------------------------ operator actions

    def pin(self, keys: Sequence[bytes], pinned: bool = True) -> int:
        check_keys(keys)
        n = 0
        for key in keys:
            c = self.index.get(key)
            if c is not None:
                c.pinned = pinned
                n += 1
        return n

    async def evict(self, *, keys: Sequence[bytes] | None = None, namespace: str | None = None,
                    tier: str | None = None, everything: bool = False) -> dict[str, int]:
        """Remove chunks from one tier (`tier`) or from all (see `Moves.evict`)."""
        if keys is None and namespace is None and not everything:
            raise InvalidArgumentError("evict needs keys, a namespace, or all=true")
        if tier is not None and tier not in self.tier_names:
            raise InvalidArgumentError(f"tier {shown(tier)}: use one of {self.tier_names}")
        if keys is not None:
            check_keys(keys)
            chunks = [self.index[k] for k in dict.fromkeys(keys) if k in self.index]
        else:
            chunks = [c for c in self.index.values() if namespace is None or c.namespace == namespace]
        return await self.moves.evict(chunks, tier)

    async def inspect(self, key: bytes) -> dict[str, Any]:
        return await report.inspect(self, key)

    def ls(self, *, tier: str | None = None, namespace: str | None = None, key_prefix: str | None = None,
           sort: str = "last_access", limit: int | None = None) -> list[dict[str, Any]]:
        return report.ls(self, tier=tier, namespace=namespace, key_prefix=key_prefix, sort=sort, limit=limit)

    def stat(self) -> dict[str, Any]:
        return report.stat(self)

    # ------------------------------------------------------------------ callbacks of the parts

    def _index_found(self, found: Sequence[Any]) -> None:
        """Index what a lookup found in the bucket, except copies this node is deleting: a copy
        removed (evicted, or found wrong by the canary) must not come back through a lookup that
        raced its deletion."""
        assert self.shared is not None
        deleting = self.writedown.deleting
        self.index.index_found([h for h in found if h.key not in deleting] if deleting else found, self.shared)

    def _observe_promotion(self, nbytes: int, seconds: float, tier_code: int) -> None:
        name = self.tier_names[tier_code]
        if name in self.costs:
            self.costs[name].observe(nbytes, seconds)


__all__ = ["Chunk", "TieredStore"]
