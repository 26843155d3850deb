"""Reservations and leases, each owned by one client connection (a `Session`).

A put is reserve (DRAM slots for the missing keys, invisible to lookups) -> the client copies
the chunk bytes into the slots -> commit (the chunks join the index). A get is acquire (lease
the keys' DRAM slots, promoting from lower tiers first) -> the client copies out -> release.
Closing a session returns everything it holds, whether the client closed cleanly or crashed.

Quota bytes of a reservation are charged the moment its room is found, before its slot is
awaited, so concurrent puts of one namespace never together exceed the namespace's quota.

A put may name each chunk's token ids and the key of the chunk before its first (`tokens`,
`parent`), for the KV events a router reads (`tierd.events`): they are checked whether or not
events are published (bad ones refuse the whole reserve), and kept (4 bytes a token) only while
they are: `ChunkIndex.lineage`.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from array import array
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from tierd.errors import (
    AlreadyStoredError,
    InvalidArgumentError,
    LayoutMismatchError,
    NotFoundError,
    NotReservedError,
    SlotNotWrittenError,
)
from tierd.events.wire import keep_tokens
from tierd.layout import Layout
import tierd.store.canary as canary
from tierd.store.chunk import ABSENT, DRAM, Chunk, Lease, Reservation, Session, check_keys, check_namespace
from tierd.store.dram import DramRoom
from tierd.store.index import ChunkIndex, Lineage
from tierd.store.moves import Moves
from tierd.store.uploads import Upload, UploadQueue

if TYPE_CHECKING:
    from tierd.store.quarantine import Quarantine
    from tierd.store.verify import Verifier

#: Told the bytes a get promoted, how long that took, and the slowest tier it read (cost model).
PromotionObserver = Callable[[int, float, int], None]


class Sessions:
    def __init__(self, index: ChunkIndex, dram: DramRoom, moves: Moves, uploads: UploadQueue,
                 layouts: Mapping[str, Layout], *, write_through: bool, slot_check: bool = True) -> None:
        self.index = index
        self.dram = dram
        self.moves = moves
        self.uploads = uploads
        self.layouts = layouts
        self.write_through = write_through
        #: Arm a canary in every reserved slot and refuse a commit that left one (`canary`).
        self.slot_check = slot_check
        #: Commits refused because a slot was not fully written.
        self.not_written = 0
        self.on_promoted: PromotionObserver | None = None
        #: The live canary and the tiers it quarantined (set by the store).
        self.verifier: Verifier | None = None
        self.quarantine: Quarantine | None = None
        self.open: dict[int, Session] = {}
        #: The lineage of each reserved key whose put gave one, until its commit or abort.
        self.pending_lineage: dict[bytes, Lineage] = {}
        self._session_ids = itertools.count(1)
        self._lease_ids = itertools.count(1)

    def open_session(self, name: str = "") -> Session:
        session = Session(next(self._session_ids), name)
        self.open[session.id] = session
        return session

    def close_session(self, session: Session) -> None:
        """Return every reservation and lease of a connection (clean close or crash alike)."""
        self.abort(session, list(session.reservations))
        for lease_id in list(session.leases):
            self.release(session, lease_id)
        if self.verifier is not None:
            self.verifier.close_session(session)
        self.open.pop(session.id, None)

    # ------------------------------------------------------------------ put: reserve + commit

    async def reserve(self, session: Session, layout: Layout, namespace: str, keys: Sequence[bytes], nbytes: int,
                      *, first_position: int = 0, timeout: float = 5.0, tokens: Sequence[Sequence[int]] | None = None,
                      parent: bytes | None = None) -> list[int | None]:
        """Slots to write the missing keys into; None for a key already stored or being written,
        or for which no room could be made in time (that chunk is simply not cached). `tokens`:
        each key's token ids; `parent`: the key before keys[0] in its prompt (for KV events)."""
        check_keys(keys)
        check_namespace(namespace)
        if nbytes != layout.chunk_bytes:
            raise LayoutMismatchError(f"chunk size {nbytes} does not match layout {layout.layout_id} "
                                      f"({layout.chunk_bytes} bytes per chunk)")
        if isinstance(first_position, bool) or not isinstance(first_position, int) or first_position < 0:
            raise InvalidArgumentError(f"first_position {first_position!r}: must be a chunk index >= 0")
        lineage = lineages(keys, layout, first_position, tokens, parent, keep=self.index.events is not None)
        deadline = time.monotonic() + timeout
        quotas = self.dram.quotas
        slots: list[int | None] = []
        for i, key in enumerate(keys):
            if self._stored(key) or key in self.index.reserved or not await self.moves.quota_room(namespace, nbytes):
                slots.append(None)
                continue
            quotas.charge(DRAM, namespace, nbytes)  # claimed now: nothing awaited since quota_room checked
            slot = await self.dram.alloc_slot(nbytes, deadline, namespace=namespace,
                                              has_lower=bool(self.index.lowers),
                                              writedown_failing=self.moves.writedown_failing)
            if slot is None or self._stored(key) or key in self.index.reserved:  # raced while waiting
                if slot is not None:
                    self.dram.free_slot(slot, nbytes)
                quotas.charge(DRAM, namespace, -nbytes)
                slots.append(None)
                continue
            r = Reservation(key, layout.layout_id, namespace, slot, nbytes, first_position + i,
                            canary.arm(self.dram.arena.view(slot, nbytes)) if self.slot_check else None)
            session.reservations[key] = r
            self.index.reserved[key] = r
            if lineage is not None:
                self.pending_lineage[key] = lineage[i]
            slots.append(slot)
        return slots

    def commit(self, session: Session, keys: Sequence[bytes]) -> int:
        """Make reserved chunks visible. All-or-nothing: any bad key fails the whole batch."""
        check_keys(keys)
        seen: set[bytes] = set()
        for key in keys:
            if key in seen:
                raise InvalidArgumentError(f"key {key.hex()} appears twice in one commit")
            seen.add(key)
            if key not in session.reservations:
                if key in self.index:
                    raise AlreadyStoredError(f"key {key.hex()} is already stored; a chunk is committed once")
                raise NotReservedError(f"key {key.hex()} was not reserved by this connection; reserve it first")
        self._check_written(session, keys)
        now = time.time()
        for key in keys:
            r = session.reservations.pop(key)
            del self.index.reserved[key]
            lineage = self.pending_lineage.pop(key, None) if self.pending_lineage else None
            c = self.index.get(key)
            if c is not None and c.slot is not None:  # put over a quarantined copy, promoted since a clear
                self.dram.free_slot(r.slot, r.size)
                self.dram.quotas.charge(DRAM, r.namespace, -r.size)
                continue
            if c is not None and c.namespace != r.namespace:  # found remotely: its local copies move over
                self.index.move_namespace(c, r.namespace)
            if c is None:
                c = self.index[key] = Chunk(key, r.layout_id, r.namespace, r.size, now, now, position=r.position)
            c.layout_id, c.size = r.layout_id, r.size  # (a found chunk may lack them)
            if lineage is not None and self.index.events is not None:
                self.index.lineage[key] = lineage
            self.dram.place(c, r.slot)
            if self.quarantine is not None and c.moving is None:  # stored afresh over suspect copies
                for name in self.quarantine.suspect_copies(c):
                    self.moves.writedown.delete_copy(c, self.index.lower_named(name))
            if self.verifier is not None:
                self.verifier.committed(key)
            shared = self.index.lowers[-1] if self.index.lowers and self.index.lowers[-1].shared else None
            if (shared is not None and self.write_through and shared.name not in c.lower
                    and shared.admission.admits(key, c.hits, depth=c.position)):
                self.uploads.put(Upload(key, r.layout_id, r.namespace, r.size, now, r.position))
        return len(keys)

    def _stored(self, key: bytes) -> bool:
        """Whether a put must skip `key`: it is stored, and not only in a quarantined tier."""
        c = self.index.get(key)
        return c is not None and not (self.quarantine is not None and self.quarantine.replaceable(c))

    def _check_written(self, session: Session, keys: Sequence[bytes]) -> None:
        """Refuse the whole commit (its reservations aborted, nothing stored) if any slot still
        holds its canary: its writer did not write all of it, and the rest is old bytes."""
        for key in keys:
            r = session.reservations[key]
            offset = canary.unwritten(self.dram.arena.view(r.slot, r.size), r.canary)
            if offset is not None:
                self.not_written += 1
                self.abort(session, keys)
                raise SlotNotWrittenError(
                    f"key {key.hex()}: its slot was committed before it was fully written (byte {offset} of "
                    f"{r.size} was never written; did a device copy finish before the commit?); "
                    f"nothing of this commit was stored")

    def abort(self, session: Session, keys: Sequence[bytes]) -> int:
        """Drop reservations (a put that failed or a client that went away); frees their slots."""
        n = 0
        for key in keys:
            r = session.reservations.pop(key, None)
            if r is None:
                continue
            del self.index.reserved[key]
            self.pending_lineage.pop(key, None)
            self.dram.free_slot(r.slot, r.size)
            self.dram.quotas.charge(DRAM, r.namespace, -r.size)
            n += 1
        return n

    # ------------------------------------------------------------------ get: acquire + release

    async def acquire(self, session: Session, layout: Layout, keys: Sequence[bytes], *,
                      prefix_only: bool = True) -> tuple[int, list[int | None]]:
        """Lease the keys' DRAM slots, promoting from lower tiers first. Returns (lease id, slot per
        key); a key that is absent, of another layout, or fails verification gets None, and with
        `prefix_only` so does every key after it."""
        check_keys(keys)
        lease = Lease(next(self._lease_ids), [])
        session.leases[lease.id] = lease
        wanted: list[Chunk | None] = []
        for key in keys:
            c = self.index.get(key)
            if (c is None or c.layout_id not in (layout.layout_id, "")  # "": found remotely, checked on read
                    or (self.quarantine is not None and not self.quarantine.serves(c))):
                wanted.append(None)
                if prefix_only:
                    break
                continue
            wanted.append(c)
            c.leases += 1  # hold it now so nothing moves it while others are promoted
            lease.chunks.append(c)
        promoting = [c for c in wanted if c is not None and c.slot is None]
        codes = [c.tier_code for c in promoting if c.tier_code != ABSENT]  # where they are read from
        before = {c.key: list(c.lower) for c in promoting} if self.verifier is not None else {}
        started = time.perf_counter()
        results = await asyncio.gather(*(self.moves.promote(c, layout.layout_id, layout.chunk_bytes)
                                         for c in wanted if c is not None))
        if promoting and self.on_promoted is not None:  # the batch's throughput, credited to its slowest tier
            self.on_promoted(sum(c.size for c in promoting), time.perf_counter() - started, max(codes, default=0))
        if promoting and self.verifier is not None:  # which tier each DRAM copy came from (canary blame)
            self.verifier.promoted(promoting, before)
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
            self.dram.touch(c)
            slots.append(c.slot)
        slots.extend([None] * (len(keys) - len(slots)))
        return lease.id, slots

    def release(self, session: Session, lease_id: int) -> int:
        lease = session.leases.pop(lease_id, None)
        if lease is None:
            raise NotFoundError(f"lease {lease_id} is not held by this connection")
        for c in lease.chunks:
            c.leases -= 1
        self.dram.check_pressure()
        return len(lease.chunks)


def lineages(keys: Sequence[bytes], layout: Layout, first_position: int, tokens: Sequence[Sequence[int]] | None,
             parent: bytes | None, *, keep: bool) -> list[Lineage] | None:
    """Each key's (parent key, kept token ids) from a put's `tokens` and `parent`, checked: one
    list of `layout.chunk_tokens` token ids per key, a parent only for a put that does not start a
    prompt. Keys are in prompt order, so the parent of keys[i] is keys[i-1]. None when the put
    gave neither, or when nothing is kept (`keep`: KV events are off; still checked)."""
    if parent is not None:
        check_keys([parent])
        if first_position == 0:
            raise InvalidArgumentError("parent: the put starts at first_position 0, a prompt's first chunk, "
                                       "which has no parent; leave it out or give the chunk index of keys[0]")
    kept: list[array] = []
    if tokens is not None:
        if not isinstance(tokens, (list, tuple)) or len(tokens) != len(keys):
            raise InvalidArgumentError(f"tokens: give one list of token ids per key ({len(keys)} keys, "
                                       f"got {len(tokens) if isinstance(tokens, (list, tuple)) else type(tokens).__name__})")
        for i, ids in enumerate(tokens):
            try:
                if isinstance(ids, (str, bytes)):
                    raise TypeError(f"{type(ids).__name__} is not a list")
                kept.append(keep_tokens(ids))
            except (TypeError, OverflowError, ValueError) as exc:
                raise InvalidArgumentError(f"tokens[{i}]: token ids are integers from 0 to 2**32-1 ({exc})") from None
            if len(kept[-1]) != layout.chunk_tokens:
                raise InvalidArgumentError(f"tokens[{i}]: {len(kept[-1])} token ids; a chunk of layout "
                                           f"{layout.layout_id} has {layout.chunk_tokens} tokens")
    if not keep or (tokens is None and parent is None):
        return None
    parents = [parent, *keys[:-1]]
    if tokens is None:
        return [(p, None) for p in parents]
    return list(zip(parents, kept))
