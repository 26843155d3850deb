"""The tiered store: one index over a shared-memory DRAM arena and the tiers below it.

This is the whole cache. The daemon serves it over a socket; embedded mode calls it in-process.

Ownership rules (the invariants everything else relies on):

- A DRAM slot belongs to exactly one of: the allocator's free list, a reservation (a put in
  progress, invisible to lookups), or a committed chunk in the index.
- A chunk is in the index once committed, and stays there while at least one tier holds a
  durable copy of it. `Chunk.slot` is its DRAM copy; `Chunk.lower` maps lower-tier names to the
  bytes its durable copy occupies there.
- A chunk with leases, a pin, or a move in flight (`moving`) is never evicted or moved.
- Every reservation and lease belongs to a `Session` (a client connection); closing the session
  returns all of them.
- Eviction from DRAM demotes to the first lower tier in the background (write-back): the DRAM
  slot is freed only after the lower copy is durable. A hit on a lower tier promotes into DRAM.
- Each tier's used bytes (including writes in flight) never exceed its capacity.
- The last lower tier may be *shared* (the object store): other nodes write to it too. Its
  `used_bytes` and LRU cover only the objects this node wrote (`--object` caps those); objects
  found through lookups are indexed but never evicted by this node. Chunks reach it through the
  upload queue: every commit with write-through, or on eviction from the last local tier.

All methods run on one asyncio loop; blocking I/O of lower tiers runs in a thread pool.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import operator
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack

from tierd.cost.tiers import TierCost
from tierd.errors import (
    CapacityError,
    ObjectTierUnavailable,
    AlreadyStoredError,
    InvalidArgumentError,
    LayoutMismatchError,
    NotFoundError,
    NotReservedError,
    UnknownLayoutError,
    shown,
)
from tierd.keys import KEY_BYTES
from tierd.layout import Layout
from tierd.policies.lru import LRUPolicy
from tierd.quotas import NamespaceQuotas
from tierd.tiers.allocator import ExtentAllocator
from tierd.tiers.arena import SharedArena
from tierd.tiers.base import LowerTier
from tierd.tiers.encoding import TierCodec
from tierd.remote_lookup import Found, SharedTierProbe
from tierd.tiers.object_format import ObjectHeader
from tierd.uploads import Upload, UploadQueue

log = logging.getLogger(__name__)

DRAM = "dram"
_META_FILE = "tierd-index.msgpack"


ABSENT = 255  # tier code of a key that is not stored


@dataclass(slots=True, eq=False)
class Chunk:
    """Metadata of one committed chunk. `tier_code` is the index of its fastest tier (0 = DRAM,
    then the lower tiers in order); the store updates it whenever a copy comes or goes, so a
    lookup reads one attribute per key."""

    key: bytes
    layout_id: str
    namespace: str
    size: int
    created: float
    last_access: float
    hits: int = 0
    pinned: bool = False
    slot: int | None = None
    lower: dict[str, int] = field(default_factory=dict)
    leases: int = 0
    moving: asyncio.Future[bool] | None = None
    tier_code: int = ABSENT
    position: int = 0  # index of this chunk in the prompt that wrote it (for admission)

    @property
    def tiers(self) -> list[str]:
        return ([DRAM] if self.slot is not None else []) + list(self.lower)

    def evictable(self) -> bool:
        return not self.pinned and self.leases == 0 and self.moving is None


@dataclass(slots=True)
class TierStats:
    """Counters of one tier; exported by `stat` and as Prometheus metrics."""

    name: str
    capacity_bytes: int
    used_bytes: int = 0
    chunks: int = 0
    hits: int = 0
    misses: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    evictions: int = 0
    demotions: int = 0
    promotions: int = 0
    corrupt: int = 0

    def to_dict(self) -> dict[str, Any]:
        total = self.hits + self.misses
        d = {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]
        d["hit_ratio"] = self.hits / total if total else 0.0
        return d


@dataclass(slots=True)
class Reservation:
    key: bytes
    layout_id: str
    namespace: str
    slot: int
    size: int
    position: int


@dataclass(slots=True)
class Lease:
    id: int
    chunks: list[Chunk]


@dataclass(slots=True)
class Session:
    """What one client connection holds; all of it is returned when the connection closes."""

    id: int
    name: str
    reservations: dict[bytes, Reservation] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)


@dataclass(slots=True)
class _Lower:
    tier: LowerTier
    stats: TierStats
    #: LRU of the copies this node may evict: all of a local tier, only its own writes of a shared one.
    lru: LRUPolicy = field(default_factory=LRUPolicy)

    @property
    def shared(self) -> bool:
        return bool(getattr(self.tier, "shared", False))


#: Called after every lookup with the keys, their tier codes and the leading-hit count.
LookupObserver = Callable[[Sequence[bytes], bytes, int], None]


class TieredStore:
    """The cache: DRAM arena + lower tiers, with leases, reservations, pins and LRU eviction."""

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
    ) -> None:
        self.arena = SharedArena(dram_bytes, **({"directory": arena_dir} if arena_dir else {}))
        self.alloc = ExtentAllocator(self.arena.size)
        self.dram = TierStats(DRAM, self.alloc.size)
        self.dram_lru = LRUPolicy()
        #: DRAM chunks that can be dropped at once (a durable lower copy exists, or there is no
        #: lower tier), oldest first: making room never rescans chunks still to be written down.
        self.dram_clean = LRUPolicy()
        # A shared tier stays even with capacity 0: this node then only reads what others wrote.
        self.lower = [_Lower(t, TierStats(t.name, cap)) for t, cap in lower_tiers
                      if cap > 0 or getattr(t, "shared", False)]
        #: Per-namespace byte limits on DRAM and the local lower tiers (`tierd.quotas`).
        self.quotas = NamespaceQuotas(quotas)
        self.layouts: dict[str, Layout] = {}
        for lower in self.lower:  # tiers with a codec encode and decode with the layouts registered here
            codec = getattr(lower.tier, "codec", None)
            if isinstance(codec, TierCodec):
                codec.layouts = self.layouts
        if any(l.shared for l in self.lower[:-1]):
            raise InvalidArgumentError("a shared (object) tier must be the last tier")
        if object_write not in ("through", "back"):
            raise InvalidArgumentError(f"object_write {object_write!r}: use 'through' or 'back'")
        #: The shared object tier, if any: uploads, remote lookups.
        self.shared = self.lower[-1] if self.lower and self.lower[-1].shared else None
        self.object_write = object_write
        self.uploads = UploadQueue(upload_queue_bytes)
        self.uploads_lost = 0  # queued chunks whose every local copy went before their upload
        self._uploading = 0
        self._upload_idle = asyncio.Event()
        self.probe: SharedTierProbe | None = None
        if self.shared is not None:
            self.probe = SharedTierProbe(self.shared.tier, self._index_found,  # type: ignore[arg-type]
                                         budget=lookup_budget)
        self._workers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.index: dict[bytes, Chunk] = {}
        self.reserved: dict[bytes, Reservation] = {}
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.meta_dir = Path(meta_dir) if meta_dir else None
        self.observers: list[LookupObserver] = []
        #: Per-tier load costs (set by the daemon); promotions refine them online.
        self.costs: dict[str, TierCost] = {}
        #: Admission rule: may this chunk be written to this lower tier? None admits everything.
        #: A refused chunk is dropped from DRAM instead of demoted (its reload could never pay).
        self.admission: Callable[[Chunk, str], bool] | None = None
        self.rejected = 0
        self._executor = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="tierd-io")
        self._io_threads = io_threads
        self._session_ids = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._sessions: dict[int, Session] = {}
        self._deleting: dict[bytes, asyncio.Future[Any]] = {}
        self._pressure = asyncio.Event()
        self._space_freed = asyncio.Event()
        self._room_waiters = 0
        self._demoter: asyncio.Task[None] | None = None
        #: The last batch of write-downs all failed (a full or broken disk): waiting for room in
        #: DRAM is pointless until one succeeds, so puts and promotions miss at once.
        self.writedown_failing = False
        self._room_below = asyncio.Event()
        #: DRAM-only chunks dropped to make room for a promotion while write-downs were failing.
        self.dropped_unwritten = 0
        self._closing = False
        self.lookups = 0
        self.lookup_hits = 0
        self.lookup_misses = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Rebuild lower-tier indexes from their media and start the background demoter."""
        loop = asyncio.get_running_loop()
        meta = self._load_meta()
        if self.shared is not None:
            await self.shared.tier.check()  # type: ignore[attr-defined]
        for lower in self.lower:
            if lower.shared:
                self._restore_owned(lower, meta)
                continue
            records = await loop.run_in_executor(self._executor, lambda t=lower.tier: list(t.scan()))
            records.sort(key=lambda r: meta.get(r.key, {}).get("last_access", r.mtime))
            for r in records:
                if lower.stats.used_bytes + r.stored_bytes > lower.stats.capacity_bytes:
                    await loop.run_in_executor(self._executor, lower.tier.delete, r.key)
                    lower.stats.evictions += 1
                    continue
                c = self.index.get(r.key)
                if c is None:
                    m = meta.get(r.key, {})
                    c = Chunk(r.key, r.layout_id, r.namespace, r.payload_len, r.created,
                              m.get("last_access", r.mtime), hits=m.get("hits", 0), pinned=m.get("pinned", False))
                    self.index[r.key] = c
                c.lower[lower.tier.name] = r.stored_bytes
                self._retier(c)
                lower.lru.touch(r.key, c.namespace)
                self.quotas.charge(lower.tier.name, c.namespace, r.stored_bytes)
                lower.stats.used_bytes += r.stored_bytes
                lower.stats.chunks += 1
            log.info("tier %s: %d chunks, %d bytes recovered", lower.tier.name, lower.stats.chunks, lower.stats.used_bytes)
        self._demoter = asyncio.create_task(self._demote_loop(), name="tierd-demoter")
        if self.shared is not None:
            self._workers = [asyncio.create_task(self._upload_loop(), name=f"tierd-upload-{i}")
                             for i in range(self._io_threads)]

    def _restore_owned(self, lower: _Lower, meta: dict[bytes, dict[str, Any]]) -> None:
        """Index the objects this node wrote before a restart (from its metadata file), so its
        capacity accounting and fast lookups survive; each one is still verified when read."""
        url = getattr(lower.tier, "url", None)
        for key, m in meta.items():
            rec = m.get("object")
            if not isinstance(rec, list) or len(rec) != 6 or rec[0] != url:
                continue
            _, stored, layout_id, namespace, size, created = rec
            c = self.index.get(key)
            if c is None:
                c = self.index[key] = Chunk(key, layout_id, namespace, size, created, m.get("last_access", created),
                                            hits=m.get("hits", 0), pinned=m.get("pinned", False))
            c.lower[lower.tier.name] = stored
            self._retier(c)
            lower.lru.touch(key, c.namespace)
            lower.stats.used_bytes += stored
            lower.stats.chunks += 1
        log.info("tier %s: %d chunks written by this node, %d bytes", lower.tier.name, lower.stats.chunks,
                 lower.stats.used_bytes)

    async def close(self, *, flush: bool = True, flush_timeout: float = 60.0) -> None:
        """Stop: optionally write DRAM-only chunks down, persist metadata, free the arena."""
        for session in list(self._sessions.values()):
            self.close_session(session)
        if flush and self.lower:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._flush_dram(), flush_timeout)
            except asyncio.TimeoutError:
                log.warning("flush of DRAM to %s timed out after %.0fs", self.lower[0].tier.name, flush_timeout)
            if self.shared is not None:
                await self._drain_uploads(max(0.0, flush_timeout - (time.monotonic() - started)))
        if self.probe is not None:
            await self.probe.close()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, *self._background, return_exceptions=True)
        self._closing = True
        self._pressure.set()
        if self._demoter is not None:
            await self._demoter
        pending = [c.moving for c in self.index.values() if c.moving is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._deleting:
            await asyncio.gather(*self._deleting.values(), return_exceptions=True)
        self._save_meta()
        self._executor.shutdown(wait=True)
        self.index.clear()
        self.arena.close()

    @property
    def uploads_in_flight(self) -> int:
        """Uploads to the shared tier under way right now (not counting the queued ones)."""
        return self._uploading

    # ----------------------------------------------------------------- sessions and layouts

    def open_session(self, name: str = "") -> Session:
        session = Session(next(self._session_ids), name)
        self._sessions[session.id] = session
        return session

    def close_session(self, session: Session) -> None:
        """Return every reservation and lease of a connection (clean close or crash alike)."""
        self.abort(session, list(session.reservations))
        for lease_id in list(session.leases):
            self.release(session, lease_id)
        self._sessions.pop(session.id, None)

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

    # ----------------------------------------------------------------- lookup

    @property
    def tier_names(self) -> list[str]:
        """Tier names by tier code."""
        return [DRAM] + [l.tier.name for l in self.lower]

    def _retier(self, c: Chunk) -> None:
        """After a copy of `c` came or went: its fastest tier, and whether DRAM may drop it at once."""
        if c.slot is not None and self._written_down(c):
            if c.key not in self.dram_clean:
                self.dram_clean.touch(c.key)
        else:
            self.dram_clean.remove(c.key)
        if c.slot is not None:
            c.tier_code = 0
            return
        c.tier_code = next((i for i, l in enumerate(self.lower, 1) if l.tier.name in c.lower), ABSENT)

    def _written_down(self, c: Chunk) -> bool:
        """Whether DRAM may drop `c` without writing it down: it has a copy on the first lower tier."""
        return not self.lower or self.lower[0].tier.name in c.lower

    def lookup(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """How many leading chunks are present locally, and the tier code of each key
        (`tier_names` maps codes to names; ABSENT = not stored). `lookup_async` also asks the
        shared object tier about keys this node has not seen.

        This runs on every request, so the per-key work is C-level loops over one attribute."""
        _check_keys(keys)
        prefix, codes = self._local_codes(keys)
        return self._observed(keys, codes, prefix)

    async def lookup_async(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """`lookup`, then — if the leading run stops early and there is a shared tier — how far
        it continues there (within the probe's time budget). Found objects join the index."""
        _check_keys(keys)
        prefix, codes = self._local_codes(keys)
        if self.probe is not None and prefix < len(keys) and keys[prefix] not in self.reserved:
            await self.probe.extend(keys[prefix:])  # indexes what it finds
            prefix, codes = self._local_codes(keys)
        return self._observed(keys, codes, prefix)

    def _index_found(self, found: Sequence[Any]) -> None:
        """Index objects other nodes wrote (`remote_lookup.Found`): readable here, not ours to
        evict. A layout id of "" means not known yet: the first read verifies it."""
        assert self.shared is not None
        name = self.shared.tier.name
        now = time.time()
        for h in found:
            if h.key in self.reserved:
                break  # being written here right now: the local commit wins
            c = self.index.get(h.key)
            if c is None:
                c = self.index[h.key] = Chunk(h.key, h.layout_id, h.namespace, h.payload_len, h.created or now, now)
            if name not in c.lower:
                c.lower[name] = h.object_bytes or self.shared.tier.stored_bytes(h.payload_len)
                self.shared.stats.chunks += 1
                self._retier(c)

    def _local_codes(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        chunks = map(self.index.get, keys, itertools.repeat(_ABSENT_CHUNK))
        codes = bytes(map(_tier_code, chunks))
        prefix = codes.find(ABSENT)
        return (len(codes) if prefix < 0 else prefix), codes

    def _observed(self, keys: Sequence[bytes], codes: bytes, prefix: int) -> tuple[int, bytes]:
        self._count_lookup(codes, prefix)
        for observer in self.observers:
            observer(keys, codes, prefix)
        return prefix, codes

    def _count_lookup(self, codes: bytes, prefix: int) -> None:
        self.lookups += 1
        self.lookup_hits += prefix
        self.lookup_misses += 1 if prefix < len(codes) else 0
        # Per-tier counts cover the chunks a get would read: the leading run and the first miss.
        read = codes[: prefix + 1]
        below = len(read)  # chunks that reached this tier
        for code, stats in enumerate([self.dram] + [l.stats for l in self.lower]):
            hits = read.count(code)
            stats.hits += hits
            stats.misses += below - hits
            below -= hits

    # ----------------------------------------------------------------- put: reserve + commit

    async def reserve(
        self, session: Session, layout_id: str, namespace: str, keys: Sequence[bytes], nbytes: int,
        *, first_position: int = 0, timeout: float = 5.0,
    ) -> list[int | None]:
        """Slots to write the missing keys into; None for a key already stored or being written,
        or for which no room could be made in time (that chunk is simply not cached).
        `first_position` is the chunk index of keys[0] in its prompt (used by admission)."""
        layout = self.layout(layout_id)
        _check_keys(keys)
        _check_namespace(namespace)
        if nbytes != layout.chunk_bytes:
            raise LayoutMismatchError(
                f"chunk size {nbytes} does not match layout {layout_id} ({layout.chunk_bytes} bytes per chunk)"
            )
        if first_position < 0:
            raise InvalidArgumentError(f"first_position {first_position}: must be a chunk index >= 0")
        deadline = time.monotonic() + timeout
        slots: list[int | None] = []
        for i, key in enumerate(keys):
            if key in self.index or key in self.reserved:
                slots.append(None)
                continue
            if not await self._dram_quota_room(namespace, nbytes):
                slots.append(None)
                continue
            slot = await self._alloc_slot(nbytes, deadline)
            if slot is None or key in self.index or key in self.reserved:  # raced while waiting
                if slot is not None:
                    self._free_slot(slot, nbytes)
                slots.append(None)
                continue
            self.quotas.charge(DRAM, namespace, nbytes)
            r = Reservation(key, layout_id, namespace, slot, nbytes, first_position + i)
            session.reservations[key] = r
            self.reserved[key] = r
            slots.append(slot)
        return slots

    def commit(self, session: Session, keys: Sequence[bytes]) -> int:
        """Make reserved chunks visible. All-or-nothing: any bad key fails the whole batch."""
        _check_keys(keys)
        seen: set[bytes] = set()
        for key in keys:
            if key in seen:
                raise InvalidArgumentError(f"key {key.hex()} appears twice in one commit")
            seen.add(key)
            if key not in session.reservations:
                if key in self.index:
                    raise AlreadyStoredError(f"key {key.hex()} is already stored; a chunk is committed once")
                raise NotReservedError(f"key {key.hex()} was not reserved by this connection; reserve it first")
        now = time.time()
        for key in keys:
            r = session.reservations.pop(key)
            del self.reserved[key]
            c = self.index.get(key)
            if c is not None and c.slot is not None:  # cannot happen: reserved keys are never indexed
                self._free_slot(r.slot, r.size)
                self.quotas.charge(DRAM, r.namespace, -r.size)
                continue
            if c is not None and c.namespace != r.namespace:  # found remotely: its local copies move over
                for name in c.lower:
                    lower = self._lower_by_name(name)
                    if not lower.shared:
                        self.quotas.charge(name, c.namespace, -c.lower[name])
                        self.quotas.charge(name, r.namespace, c.lower[name])
                    if key in lower.lru:
                        lower.lru.touch(key, r.namespace)
            if c is None:
                c = self.index[key] = Chunk(key, r.layout_id, r.namespace, r.size, now, now, position=r.position)
            c.layout_id, c.namespace, c.slot = r.layout_id, r.namespace, r.slot  # (a found chunk may lack them)
            self._retier(c)
            self.dram_lru.touch(key, c.namespace)
            self.dram.chunks += 1
            self.dram.bytes_in += r.size
            if self.shared is not None and self.object_write == "through" and self.shared.tier.name not in c.lower:
                self.uploads.put(Upload(key, r.layout_id, r.namespace, r.size, now, r.position))
        self._check_pressure()
        return len(keys)

    def abort(self, session: Session, keys: Sequence[bytes]) -> int:
        """Drop reservations (a put that failed or a client that went away); frees their slots."""
        n = 0
        for key in keys:
            r = session.reservations.pop(key, None)
            if r is None:
                continue
            del self.reserved[key]
            self._free_slot(r.slot, r.size)
            self.quotas.charge(DRAM, r.namespace, -r.size)
            n += 1
        return n

    # ----------------------------------------------------------------- get: acquire + release

    async def acquire(
        self, session: Session, layout_id: str, keys: Sequence[bytes], *, prefix_only: bool = True
    ) -> tuple[int, list[int | None]]:
        """Lease the keys' DRAM slots, promoting from lower tiers first. Returns (lease id, slot per
        key); a key that is absent, of another layout, or fails verification gets None, and with
        `prefix_only` so does every key after it."""
        self.layout(layout_id)
        _check_keys(keys)
        lease = Lease(next(self._lease_ids), [])
        session.leases[lease.id] = lease
        wanted: list[Chunk | None] = []
        for key in keys:
            c = self.index.get(key)
            if c is None or c.layout_id not in (layout_id, ""):  # "": found remotely, checked on read
                wanted.append(None)
                if prefix_only:
                    break
                continue
            wanted.append(c)
            c.leases += 1  # hold it now so nothing moves it while others are promoted
            lease.chunks.append(c)
        promoting = [c for c in wanted if c is not None and c.slot is None]
        started = time.perf_counter()
        results = await asyncio.gather(*(self._ensure_in_dram(c, layout_id) for c in wanted if c is not None))
        if promoting:  # the batch's effective throughput, credited to the slowest tier it read
            slowest = self.tier_names[max(c.tier_code for c in promoting if c.tier_code != ABSENT)
                                      if any(c.tier_code != ABSENT for c in promoting) else 0]
            if slowest in self.costs:
                self.costs[slowest].observe(sum(c.size for c in promoting), time.perf_counter() - started)
        ok = iter(results)
        slots: list[int | None] = []
        now = time.time()
        failed = False
        for c in wanted:
            good = c is not None and next(ok) and not (prefix_only and failed)
            if not good:
                failed = True
                slots.append(None)
                continue
            assert c is not None and c.slot is not None
            c.hits += 1
            c.last_access = now
            self.dram_lru.touch(c.key, c.namespace)
            if c.key in self.dram_clean:
                self.dram_clean.touch(c.key)
            self.dram.bytes_out += c.size
            slots.append(c.slot)
        slots.extend([None] * (len(keys) - len(slots)))
        return lease.id, slots

    def release(self, session: Session, lease_id: int) -> int:
        lease = session.leases.pop(lease_id, None)
        if lease is None:
            raise NotFoundError(f"lease {lease_id} is not held by this connection")
        for c in lease.chunks:
            c.leases -= 1
        self._check_pressure()
        return len(lease.chunks)

    async def _ensure_in_dram(self, c: Chunk, layout_id: str) -> bool:
        """Promote a leased chunk into DRAM if it is only on a lower tier."""
        while c.slot is None and c.moving is not None:
            await asyncio.shield(c.moving)
        if c.slot is not None:
            return True
        if c.key not in self.index:
            return False
        if not c.layout_id:  # found by a lookup's HEAD: the raw size is the layout's, the read checks it
            c.size = self.layouts[layout_id].chunk_bytes
        for lower in self.lower:
            if lower.tier.name not in c.lower:
                continue
            if c.namespace and not await self._dram_quota_room(c.namespace, c.size):
                return False
            slot = await self._alloc_slot(c.size, time.monotonic() + 5.0, promotion=True)
            if slot is None:
                return False
            if c.slot is not None or c.moving is not None:
                # Another acquire promoted it, or started to, while this one waited for room.
                self._free_slot(slot, c.size)
                return await self._ensure_in_dram(c, layout_id)
            c.moving = asyncio.get_running_loop().create_future()
            unavailable = False
            try:
                ok = await self._tier_io(lower, "read_into", c.key, self.arena.view(slot, c.size),
                                         layout_id=c.layout_id or layout_id, payload_len=c.size,
                                         stored_bytes=c.lower.get(lower.tier.name))
            except ObjectTierUnavailable as exc:  # the store is down: a miss, the copy stays known
                log.warning("reading chunk %s: %s", c.key.hex(), exc)
                ok, unavailable = False, True
            except Exception:  # an I/O error is a miss, never data
                log.exception("reading chunk %s from %s failed", c.key.hex(), lower.tier.name)
                ok = False
            finally:
                fut, c.moving = c.moving, None
            if unavailable:
                self._free_slot(slot, c.size)
                fut.set_result(False)
                continue
            if ok:
                if not c.layout_id and isinstance(ok, ObjectHeader):  # found by a lookup; the read verified it
                    c.layout_id, c.namespace = ok.layout_id, ok.namespace
                c.slot = slot
                self._retier(c)
                self.quotas.charge(DRAM, c.namespace, c.size)
                self.dram.chunks += 1
                self.dram.bytes_in += c.size
                self.dram.promotions += 1
                lower.stats.bytes_out += c.size
                if c.key in lower.lru or not lower.shared:  # recency of the copies this node owns
                    lower.lru.touch(c.key, c.namespace)
                fut.set_result(True)
                self._check_pressure()
                if lower is not self.lower[0] and not self.lower[0].shared and not self._written_down(c):
                    self._spawn(self._copy_down(c))  # an object-tier hit lands on NVMe too
                return True
            self._free_slot(slot, c.size)
            lower.stats.corrupt += 1
            self._forget_lower_copy(c, lower)  # the tier already removed the bad copy
            fut.set_result(False)
        return False

    async def _copy_down(self, c: Chunk) -> None:
        """Write a promoted chunk to the first lower tier as well, keeping its DRAM copy."""
        if c.slot is None or c.moving is not None or c.key not in self.index:
            return
        fut = c.moving = asyncio.get_running_loop().create_future()
        ok = False
        try:
            ok = await self._write_lower(c, self.lower[0], self.arena.view(c.slot, c.size))
        finally:
            c.moving = None
            fut.set_result(ok)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tier_io(self, lower: _Lower, op: str, *args: Any, **kwargs: Any) -> Any:
        """One tier operation: awaited directly on an asynchronous tier (the object store),
        run in the I/O thread pool on a blocking one (NVMe)."""
        method = getattr(lower.tier, op + "_async", None)
        if method is not None:
            return await method(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(getattr(lower.tier, op), *args, **kwargs))

    # ----------------------------------------------------------------- pin, evict, inspect

    def pin(self, keys: Sequence[bytes], pinned: bool = True) -> int:
        _check_keys(keys)
        n = 0
        for key in keys:
            c = self.index.get(key)
            if c is not None:
                c.pinned = pinned
                n += 1
        return n

    async def evict(
        self, *, keys: Sequence[bytes] | None = None, namespace: str | None = None,
        tier: str | None = None, everything: bool = False,
    ) -> dict[str, int]:
        """Remove chunks from one tier (`tier`) or from all. Evicting from DRAM writes a chunk
        down first when no lower copy exists. Pinned and leased chunks are skipped and counted."""
        if keys is None and namespace is None and not everything:
            raise InvalidArgumentError("evict needs keys, a namespace, or all=true")
        if tier is not None and tier != DRAM and tier not in {l.tier.name for l in self.lower}:
            raise InvalidArgumentError(f"tier {tier!r}: use one of {[DRAM] + [l.tier.name for l in self.lower]}")
        if keys is not None:
            _check_keys(keys)
            chunks = [self.index[k] for k in keys if k in self.index]
        else:
            chunks = [c for c in self.index.values() if namespace is None or c.namespace == namespace]
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
            if self.lower:  # write DRAM-only chunks down first, in parallel; _demote frees their slots
                await asyncio.gather(*(self._demote(c) for c in in_dram if not self._written_down(c)))
            for c in in_dram:
                if c.slot is not None and c.evictable() and self._written_down(c):
                    self._drop_dram_copy(c)
                result["evicted"] += c.slot is None
            return result
        for c in movable:
            if tier is not None:
                lower = next(l for l in self.lower if l.tier.name == tier)
                if tier not in c.lower:
                    continue
                self._delete_lower_copy(c, lower)
            else:
                if c.slot is not None:
                    self._drop_dram_copy(c)
                for lower in self.lower:
                    if lower.tier.name in c.lower:
                        self._delete_lower_copy(c, lower)
            result["evicted"] += 1
        return result

    async def inspect(self, key: bytes) -> dict[str, Any]:
        """One chunk's metadata, with how each lower tier stores it (codec, stored bytes, ratio,
        read from the tier's own header); for an object-tier copy also which node wrote it and
        when (so it works for chunks other nodes wrote)."""
        _check_keys([key])
        c = self.index.get(key)
        shared = self.shared
        extra: dict[str, Any] = {}
        headers: dict[str, Any] = {}
        if shared is not None and (c is None or shared.tier.name in c.lower):
            try:
                header = await shared.tier.read_header(key)  # type: ignore[attr-defined]
            except ObjectTierUnavailable as exc:
                if c is None:
                    raise NotFoundError(f"key {key.hex()} is not stored locally, and the object tier "
                                        f"could not be asked: {exc}") from None
                header, extra = None, {"object": {"error": str(exc)}}
            else:
                if header is not None:
                    if c is None or not c.layout_id:
                        self._index_found([Found(key, header.payload_len, header.layout_id, header.namespace,
                                                 header.created, header.object_bytes)])
                        c = self.index[key]
                        c.layout_id, c.namespace, c.size = header.layout_id, header.namespace, header.payload_len
                    headers[shared.tier.name] = header
                    extra = {"object": {
                        "node": header.node, "written": header.created, "stored_bytes": header.object_bytes,
                        "written_by_this_node": key in shared.lru, "url": getattr(shared.tier, "url", None)}}
                elif c is not None:  # gone from the bucket (another node's gc): forget it
                    self._forget_lower_copy(c, shared)
                    c = self.index.get(key)
        if c is None:
            raise NotFoundError(f"key {key.hex()} is not stored")
        for lower in self.lower:
            if lower.tier.name in c.lower and lower.tier.name not in headers and not lower.shared:
                headers[lower.tier.name] = await self._tier_io(lower, "read_header", key)
        stored = {name: {"codec": h.codec or "raw", "stored_bytes": h.stored,
                         "ratio": h.payload_len / h.stored if h.stored else None}
                  for name, h in headers.items() if h is not None}
        return {**self._describe(c), **extra, "stored": stored}

    def ls(
        self, *, tier: str | None = None, namespace: str | None = None, key_prefix: str | None = None,
        sort: str = "last_access", limit: int | None = None,
    ) -> list[dict[str, Any]]:
        if sort not in ("last_access", "size", "created", "hits"):
            raise InvalidArgumentError(f"sort {sort!r}: use last_access, size, created or hits")
        rows = [
            c for c in self.index.values()
            if (tier is None or tier in c.tiers)
            and (namespace is None or c.namespace == namespace)
            and (key_prefix is None or c.key.hex().startswith(key_prefix.lower()))
        ]
        rows.sort(key=lambda c: getattr(c, sort), reverse=True)
        return [self._describe(c) for c in rows[: limit if limit is not None else len(rows)]]

    def stat(self) -> dict[str, Any]:
        self.dram.used_bytes = self.alloc.used
        tiers = [self.dram.to_dict()] + [l.stats.to_dict() for l in self.lower]
        for row, lower in zip(tiers[1:], self.lower):
            codec = getattr(lower.tier, "codec", None)
            if isinstance(codec, TierCodec):
                row.update(codec.stats())
        if self.shared is not None:
            tiers[-1].update(self.shared.tier.stats())  # type: ignore[attr-defined]
            tiers[-1].update(self.uploads.stats())
            assert self.probe is not None
            tiers[-1].update(self.probe.stats())
            tiers[-1].update({"uploads_lost": self.uploads_lost, "upload_inflight": self._uploading,
                              "write_mode": self.object_write})
        return {
            "tiers": tiers,
            "chunks": len(self.index),
            "layouts": sorted(self.layouts),
            "sessions": len(self._sessions),
            "reservations": len(self.reserved),
            "leases": sum(len(s.leases) for s in self._sessions.values()),
            "lookups": self.lookups,
            "admission_rejected": self.rejected,
            "writedown_failing": self.writedown_failing,
            "dropped_unwritten": self.dropped_unwritten,
            "arena_path": str(self.arena.path),
            "arena_bytes": self.arena.size,
        }

    def _describe(self, c: Chunk) -> dict[str, Any]:
        return {
            "key": c.key.hex(), "tiers": c.tiers, "size": c.size, "namespace": c.namespace,
            "layout_id": c.layout_id, "created": c.created, "last_access": c.last_access,
            "hits": c.hits, "pinned": c.pinned, "leases": c.leases,
        }

    # ----------------------------------------------------------------- DRAM space

    async def _dram_quota_room(self, namespace: str, nbytes: int) -> bool:
        """Make `nbytes` of room in DRAM within `namespace`'s quota from its own chunks, oldest
        first (written down first where they have no lower copy). False when the namespace has
        nothing that may move: the put or promotion is then not cached."""
        while self.quotas.over(DRAM, namespace, nbytes):
            victim = next((self.index[k] for k in self.dram_lru.oldest_first(namespace)
                           if self.index[k].evictable()), None)
            if victim is None:
                self.quotas.refused += 1
                return False
            if self._written_down(victim) or not self._admits(victim, self.lower[0]):
                self._drop_dram_copy(victim)
                self.dram.evictions += 1
            elif not await self._demote(victim):
                self.quotas.refused += 1
                return False
        return True

    def _lower_by_name(self, name: str) -> _Lower:
        return next(l for l in self.lower if l.tier.name == name)

    async def _alloc_slot(self, nbytes: int, deadline: float, *, promotion: bool = False) -> int | None:
        """A free slot, making room if needed: drop clean copies at once, else wait for the
        demoter to write dirty ones down. None if no room appears before the deadline."""
        while True:
            slot = self.alloc.alloc(nbytes)
            if slot is not None:
                self._check_pressure()
                return slot
            if self._drop_clean(nbytes):
                continue
            if promotion and self.writedown_failing and self._drop_one_unwritten():
                continue  # the lower tier takes nothing (a full disk): serve the hit, DRAM acts as plain LRU
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing or not self._has_demotable() or self.writedown_failing:
                return None  # (write-downs failing, e.g. a full disk: a miss now, not after the deadline)
            self._room_waiters += 1
            self._space_freed.clear()
            self._pressure.set()
            try:
                await asyncio.wait_for(self._space_freed.wait(), remaining)
            except asyncio.TimeoutError:
                return None
            finally:
                self._room_waiters -= 1

    def _drop_clean(self, nbytes: int) -> bool:
        """Drop droppable DRAM copies, oldest first, until `nbytes` fit. True if any was freed."""
        freed = False
        while self.alloc.largest_free < self.alloc.rounded(nbytes) and self._drop_one_clean():
            freed = True
        return freed

    def _drop_one_clean(self) -> bool:
        """Drop the least recently used droppable DRAM copy nobody holds. O(held ones skipped)."""
        for key in self.dram_clean.oldest_first():
            c = self.index[key]
            if c.evictable():
                break
        else:
            return False
        self._drop_dram_copy(c)
        self.dram.evictions += 1
        return True

    def _drop_one_unwritten(self) -> bool:
        """Drop the least recently used DRAM chunk nobody holds, written down or not (only while
        write-downs fail, for a promotion: a hit is worth more than an older chunk that cannot be
        written down anyway). Counted in `dropped_unwritten`."""
        victim = next((self.index[k] for k in self.dram_lru.oldest_first() if self.index[k].evictable()), None)
        if victim is None:
            return False
        self._drop_dram_copy(victim)
        self.dram.evictions += 1
        self.dropped_unwritten += 1
        return True

    def _has_demotable(self) -> bool:
        return bool(self.lower) and any(
            self.index[k].evictable() or self.index[k].moving is not None for k in self.dram_lru.oldest_first()
        )

    def _free_slot(self, slot: int, nbytes: int) -> None:
        self.alloc.free(slot, nbytes)
        self._space_freed.set()

    def _drop_dram_copy(self, c: Chunk) -> None:
        assert c.slot is not None
        self._free_slot(c.slot, c.size)
        self.quotas.charge(DRAM, c.namespace, -c.size)
        c.slot = None
        self._retier(c)
        self.dram_lru.remove(c.key)
        self.dram.chunks -= 1
        self._unindex_if_gone(c)

    def _check_pressure(self) -> None:
        if self.alloc.used > self.high_watermark * self.alloc.size:
            self._pressure.set()

    # ----------------------------------------------------------------- demotion (write-back)

    async def _demote_loop(self) -> None:
        """Write DRAM down while it is over the low watermark or someone waits for room. When a
        whole batch fails (the disk is full, the tier is broken) it backs off, 50 ms doubling to
        2 s, instead of retrying the same chunks in a tight loop; any success resets it."""
        backoff = 0.0
        while True:
            await self._pressure.wait()
            self._pressure.clear()
            if self._closing:
                return
            while not self._closing and (
                self._room_waiters > 0 or self.alloc.used > self.low_watermark * self.alloc.size
            ):
                batch, dropped = self._pick_demotions(self._io_threads)
                if not batch and not dropped:
                    break
                done = await asyncio.gather(*(self._demote(c) for c in batch))
                if batch and not any(done) and not dropped:
                    self.writedown_failing = True
                    self._space_freed.set()  # puts waiting for room: no room is coming, miss now
                    backoff = min(2.0, max(0.05, backoff * 2))
                    log.warning("writing DRAM chunks down to %s failed; retrying in %.2f s", self.lower[0].tier.name,
                                backoff)
                    self._room_below.clear()
                    try:  # retry sooner if room appears below (an eviction, a deletion)
                        await asyncio.wait_for(self._room_below.wait(), backoff)
                    except asyncio.TimeoutError:
                        pass
                else:
                    backoff = 0.0
                    self.writedown_failing = False

    def _pick_demotions(self, limit: int) -> tuple[list[Chunk], bool]:
        """Under pressure, walk DRAM in LRU order: drop chunks that already have a lower copy,
        choose up to `limit` DRAM-only ones to write down (or drop, if the admission rule says
        their reload could never pay), until enough is on its way out to reach the low watermark.
        The walk stops there, so it costs the chunks it passes, not the whole tier.
        Returns (chunks to demote, whether anything was dropped)."""
        excess = self.alloc.used - self.low_watermark * self.alloc.size
        if self._room_waiters:
            excess = max(excess, 1)
        if excess <= 0:
            return [], False
        batch: list[Chunk] = []
        drop: list[Chunk] = []
        for key in self.dram_lru.oldest_first():
            c = self.index[key]
            if not c.evictable():
                continue
            if self._written_down(c) or not self._admits(c, self.lower[0]):
                drop.append(c)
            else:
                batch.append(c)
            excess -= c.size
            if len(batch) >= limit or excess <= 0:
                break
        for c in drop:
            self._drop_dram_copy(c)
            self.dram.evictions += 1
        return batch, bool(drop)

    def _admits(self, c: Chunk, lower: _Lower) -> bool:
        if self.admission is None or self.admission(c, lower.tier.name):
            return True
        self.rejected += 1
        return False

    async def _demote(self, c: Chunk) -> bool:
        """Write a DRAM chunk to the first lower tier; free its slot once the copy is durable.
        False if the write failed."""
        if not self.lower or c.slot is None:
            return True
        lower = self.lower[0]
        c.moving = asyncio.get_running_loop().create_future()
        ok = False
        try:
            ok = await self._write_lower(c, lower, self.arena.view(c.slot, c.size))
        finally:
            fut, c.moving = c.moving, None
            fut.set_result(ok)
        if not ok:
            return False
        self.dram.demotions += 1
        self.dram.evictions += 1
        if c.leases == 0 and not c.pinned and c.slot is not None:
            self._drop_dram_copy(c)
        return True

    async def _write_lower(self, c: Chunk, lower: _Lower, payload: memoryview, *,
                           raise_unavailable: bool = False) -> bool:
        need = lower.tier.stored_bytes(c.size)
        if not await self._make_room_lower(lower, need, c.namespace):
            return False
        lower.stats.used_bytes += need  # count the write in flight against capacity
        pending = self._deleting.get(c.key)
        if pending is not None:
            await asyncio.shield(pending)
        try:
            stored = await self._tier_io(lower, "write", c.key, c.layout_id, c.namespace, payload)
        except ObjectTierUnavailable as exc:
            lower.stats.used_bytes -= need
            if raise_unavailable:
                raise
            log.warning("writing chunk %s to %s: %s", c.key.hex(), lower.tier.name, exc)
            return False
        except (CapacityError, OSError) as exc:  # a full or failing disk: one line, no traceback
            log.warning("writing chunk %s to %s failed: %s", c.key.hex(), lower.tier.name, exc)
            lower.stats.used_bytes -= need
            return False
        except Exception:
            log.exception("writing chunk %s to %s failed", c.key.hex(), lower.tier.name)
            lower.stats.used_bytes -= need
            return False
        if stored:  # this node wrote it: ours to count and to evict
            lower.stats.used_bytes += stored - need
            lower.lru.touch(c.key, c.namespace)
        else:  # a shared tier already held it (another node wrote it)
            lower.stats.used_bytes -= need
            stored = need
        if lower.tier.name not in c.lower:
            lower.stats.chunks += 1
        if not lower.shared:
            self.quotas.charge(lower.tier.name, c.namespace, stored - c.lower.get(lower.tier.name, 0))
        c.lower[lower.tier.name] = stored
        self._retier(c)
        lower.stats.bytes_in += c.size
        if lower.shared and self.probe is not None:
            self.probe.forget_miss(c.key)
        return True

    async def _make_room_lower(self, lower: _Lower, need: int, namespace: str = "") -> bool:
        """Evict from `lower` until `need` more bytes fit: the namespace's own oldest chunks while
        it is at its quota on this tier, else the tier's oldest."""
        cap = lower.stats.capacity_bytes
        if need > cap:
            return False
        name = lower.tier.name
        while lower.stats.used_bytes + need > cap or (not lower.shared and self.quotas.over(name, namespace, need)):
            own = not lower.shared and self.quotas.over(name, namespace, need)
            victim = next(
                (self.index[k] for k in lower.lru.oldest_first(namespace if own else None)
                 if self.index[k].evictable()), None
            )
            if victim is None:
                if own:
                    self.quotas.refused += 1
                return False
            nxt = self._below(lower)
            if nxt is not None and nxt.shared and nxt.tier.name not in victim.lower:
                await self._hand_down(victim, lower)
                if lower.tier.name not in victim.lower or not victim.evictable():
                    continue  # it changed while we read it; look again
            self._delete_lower_copy(victim, lower)
            lower.stats.evictions += 1
        return True

    def _below(self, lower: _Lower) -> _Lower | None:
        i = self.lower.index(lower)
        return self.lower[i + 1] if i + 1 < len(self.lower) else None

    async def _hand_down(self, c: Chunk, lower: _Lower) -> None:
        """Before a local tier deletes the last local copy of a chunk the shared tier lacks,
        read it into the upload queue (write-back). Off the request path: only demotions and
        uploads make room in a lower tier."""
        buf = bytearray(c.size)
        c.moving = asyncio.get_running_loop().create_future()
        ok = False
        try:
            ok = await self._tier_io(lower, "read_into", c.key, memoryview(buf), layout_id=c.layout_id,
                                     payload_len=c.size)
        except Exception:
            log.exception("reading chunk %s from %s to hand it down failed", c.key.hex(), lower.tier.name)
        finally:
            fut, c.moving = c.moving, None
            fut.set_result(ok)
        if ok:
            self.uploads.put(Upload(c.key, c.layout_id, c.namespace, c.size, c.created, c.position, payload=buf))

    def _delete_lower_copy(self, c: Chunk, lower: _Lower) -> None:
        """Forget the copy now (so nobody reads it) and delete it in the background. Another
        node's object in a shared tier is only forgotten: it is not ours to delete."""
        owned = c.key in lower.lru
        self._forget_lower_copy(c, lower)
        if not owned:
            return
        fut = asyncio.ensure_future(self._tier_io(lower, "delete", c.key))
        self._deleting[c.key] = fut
        fut.add_done_callback(lambda f, k=c.key: self._deleting.pop(k, None) if self._deleting.get(k) is f else None)

    def _forget_lower_copy(self, c: Chunk, lower: _Lower) -> None:
        stored = c.lower.pop(lower.tier.name, None)
        if stored is None:
            return
        self._retier(c)
        if c.key in lower.lru:  # ours (always, on a local tier)
            lower.lru.remove(c.key)
            lower.stats.used_bytes -= stored
            if not lower.shared:
                self.quotas.charge(lower.tier.name, c.namespace, -stored)
                self.writedown_failing = False  # room below: worth trying again at once
                self._room_below.set()
        lower.stats.chunks -= 1
        self._unindex_if_gone(c)

    def _unindex_if_gone(self, c: Chunk) -> None:
        """A chunk whose last copy went is no longer stored (a lease may still hold the object)."""
        if c.slot is None and not c.lower and self.index.get(c.key) is c:
            del self.index[c.key]

    async def _flush_dram(self) -> None:
        """Write every DRAM-only chunk down (graceful shutdown), so a restart serves it."""
        dirty = [self.index[k] for k in self.dram_lru.oldest_first() if not self._written_down(self.index[k])]
        for i in range(0, len(dirty), self._io_threads):
            batch = [c for c in dirty[i : i + self._io_threads] if c.moving is None and c.slot is not None]
            await asyncio.gather(*(self._write_lower(c, self.lower[0], self.arena.view(c.slot, c.size))
                                   for c in batch))

    # ----------------------------------------------------------------- uploads to the shared tier

    async def _upload_loop(self) -> None:
        """One upload worker: take the oldest queued chunk, upload it; while the object store is
        unreachable, keep it queued and wait for the breaker's next probe."""
        assert self.shared is not None
        breaker = self.shared.tier.breaker  # type: ignore[attr-defined]
        while True:
            upload = await self.uploads.get()
            wait = breaker.seconds_until_retry()
            if wait > 0:
                self.uploads.put(upload, front=True)
                await asyncio.sleep(wait)  # backoff until the breaker lets a probe through
                continue
            self._uploading += 1
            try:
                await self._upload(upload)
            except ObjectTierUnavailable as exc:
                log.info("upload of %s deferred: %s", upload.key.hex(), exc)
                self.uploads.put(upload, front=True)
                await asyncio.sleep(max(breaker.seconds_until_retry(), 0.01))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upload of chunk %s failed; dropped", upload.key.hex())
            finally:
                self._uploading -= 1
                if not self._uploading:
                    self._upload_idle.set()

    async def _upload(self, u: Upload) -> None:
        assert self.shared is not None
        shared = self.shared
        c = self.index.get(u.key)
        if c is not None and shared.tier.name in c.lower:
            return
        target = c if c is not None else Chunk(u.key, u.layout_id, u.namespace, u.size, u.created, u.created,
                                               position=u.position)
        held = False
        if u.payload is not None:
            payload = memoryview(u.payload)
        elif c is not None and c.slot is not None:
            c.leases += 1  # hold the slot still while its bytes go out
            held = True
            payload = self.arena.view(c.slot, c.size)
        elif c is not None and c.lower:
            local = next(l for l in self.lower if l.tier.name in c.lower)
            buf = bytearray(c.size)
            if local.shared or not await self._tier_io(local, "read_into", c.key, memoryview(buf),
                                                      layout_id=c.layout_id, payload_len=c.size):
                self.uploads_lost += 1
                return
            payload = memoryview(buf)
        else:
            self.uploads_lost += 1
            return
        try:
            if target.key in self.index and self.index[target.key] is not target:
                return  # replaced meanwhile: its own upload entry covers it
            ok = await self._write_lower(target, shared, payload, raise_unavailable=True)
        finally:
            if held:
                assert c is not None
                c.leases -= 1
        if ok and target.key not in self.index:
            self.index[target.key] = target  # a handed-down chunk: the object is its only copy now

    async def _drain_uploads(self, timeout: float) -> None:
        """At shutdown: let the uploads in flight finish and give the queued ones up to
        `timeout` seconds to go out."""
        deadline = time.monotonic() + timeout
        if self._uploading:
            self._upload_idle.clear()
            try:
                await asyncio.wait_for(self._upload_idle.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d uploads still in flight at shutdown", self._uploading)
        while self.uploads and time.monotonic() < deadline and self.shared is not None:
            if self.shared.tier.breaker.seconds_until_retry() > 0:  # type: ignore[attr-defined]
                log.warning("object store unreachable at shutdown: %d queued uploads not sent", len(self.uploads))
                return
            u = await self.uploads.get()
            try:
                await asyncio.wait_for(self._upload(u), max(0.01, deadline - time.monotonic()))
            except (ObjectTierUnavailable, asyncio.TimeoutError):
                log.warning("upload of %s at shutdown failed; not sent", u.key.hex())
        if self.uploads:
            log.warning("%d queued uploads not sent at shutdown", len(self.uploads))

    # ----------------------------------------------------------------- metadata persistence

    def _meta_path(self) -> Path | None:
        return self.meta_dir / _META_FILE if self.meta_dir else None

    def _load_meta(self) -> dict[bytes, dict[str, Any]]:
        path = self._meta_path()
        if path is None or not path.exists():
            return {}
        try:
            raw = msgpack.unpackb(path.read_bytes(), raw=False)
            return {bytes(k): v for k, v in raw.items() if isinstance(v, dict)}
        except Exception:  # metadata is advisory: LRU order and hit counts only
            log.warning("ignoring unreadable %s", path)
            return {}

    def _save_meta(self) -> None:
        path = self._meta_path()
        if path is None or not self.lower:
            return
        data: dict[Any, Any] = {
            c.key: {"last_access": c.last_access, "hits": c.hits, "pinned": c.pinned}
            for c in self.index.values() if c.lower
        }
        if self.shared is not None:  # the objects this node wrote, to count them after a restart
            name, url = self.shared.tier.name, getattr(self.shared.tier, "url", None)
            for key in self.shared.lru.oldest_first():
                c = self.index[key]
                data[key]["object"] = [url, c.lower[name], c.layout_id, c.namespace, c.size, c.created]
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(msgpack.packb(data, use_bin_type=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:  # advisory (recency, hits, pins, own objects): losing it loses no chunk
            log.warning("could not write the index metadata %s (%s): recency, hit counts and pins of the "
                        "NVMe chunks start afresh after a restart", path, exc)
            tmp.unlink(missing_ok=True)


_ABSENT_CHUNK = Chunk(b"", "", "", 0, 0.0, 0.0)
_tier_code = operator.attrgetter("tier_code")


def _check_keys(keys: Sequence[Any]) -> None:
    if set(map(type, keys)) - {bytes} or set(map(len, keys)) - {KEY_BYTES}:
        bad = next(k for k in keys if not isinstance(k, bytes) or len(k) != KEY_BYTES)
        raise InvalidArgumentError(
            f"key {bad!r}: keys are {KEY_BYTES}-byte binary values (tierd.keys.chunk_keys makes them)"
        )


def _check_namespace(namespace: Any) -> None:
    if not isinstance(namespace, str) or not namespace or len(namespace) > 255:
        raise InvalidArgumentError(f"namespace {namespace!r}: use a non-empty string of at most 255 characters")
