"""The live correctness canary: stored chunks compared with KV an engine has just recomputed.

A connector samples a small share of the requests that have a hit (`verify_sample`), reports no
hit for them, lets the engine recompute the prefix, and sends the fresh chunks here instead of
through a normal put:

    verify reserve(keys)  -> a scratch slot for each key that IS stored (None otherwise)
    client copies its fresh KV into the scratch slots
    verify commit(keys)   -> each scratch slot compared with every copy the store holds of the
                             key; the scratch slots freed; counts per (tier, layout)

Scratch slots come from the DRAM arena like a put's, with the same slot check (a canary per
page, `tierd.store.canary`): a scratch slot its writer did not fully write is refused, and
nothing is compared. They are not charged to any namespace's quota (they live for one round
trip), never wait for room (no free slot: that key is not verified), and one connection holds
at most a quarter of the arena in them.

What is compared: the DRAM copy (in place), and each lower tier's copy, read through the tier's
own read path into a buffer (which verifies its checksum and decodes its codec; a copy that
fails there is the tier's own `corrupt` miss, as on a promotion). The chunk is claimed from
`moves` meanwhile, so nothing moves, evicts or promotes it under the comparison. How two copies
are compared, and the bounds, are `tierd.store.divergence`'s: byte-exact, or within the engine's
`tolerance`; a copy that went through a lossy codec within that codec's bound.

A diverged copy is wrong KV: it is removed at once (a DRAM copy nobody holds is dropped, a lower
copy deleted), logged with its key and tier, and counted against its tier; a tier that reaches
`--quarantine-after` divergences is quarantined (`tierd.store.quarantine`).

Blame. A DRAM copy that was promoted from a lower tier carries that tier's bytes: when it
diverges, the tier it came from is blamed (unless that tier's own copy was compared and
matched: then the bytes changed in DRAM). So a disk that serves wrong bytes under a valid
checksum quarantines the disk, not DRAM. Chunks promoted from a lossy copy are remembered too:
all their copies are compared with the lossy bound (a raw NVMe copy written down from decoded
bytes is as approximate as the object it came from). Both are kept in memory only; after a
restart a chunk that still has a copy on a lossy tier is held to that tier's bound.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from tierd.errors import InvalidArgumentError, NotReservedError, ObjectTierUnavailable, SlotNotWrittenError, shown
from tierd.layout import Layout
import tierd.store.canary as canary
from tierd.store.chunk import DRAM, Chunk, Session, check_keys
from tierd.store.divergence import Difference, codec_bound, compare
from tierd.store.dram import DramRoom
from tierd.store.index import ChunkIndex
from tierd.store.lowers import Lower
from tierd.store.moves import Moves
from tierd.store.quarantine import Quarantine

log = logging.getLogger(__name__)

#: Most of the arena one connection may hold in scratch slots.
SCRATCH_SHARE = 0.25


@dataclass(slots=True)
class Scratch:
    """A scratch slot handed out for one key's fresh KV."""

    key: bytes
    layout_id: str
    slot: int
    size: int
    canary: int | None


@dataclass(slots=True)
class Counts:
    """Comparisons of one (tier, layout): copies compared, byte-identical, different but within
    the bound, diverged; and the largest relative error seen."""

    compared: int = 0
    exact: int = 0
    within: int = 0
    diverged: int = 0
    max_error: float = 0.0

    def add(self, diff: Difference, diverged: bool) -> None:
        self.compared += 1
        self.exact += diff.exact
        self.within += not diff.exact and not diverged
        self.diverged += diverged
        self.max_error = max(self.max_error, diff.error)


@dataclass(slots=True)
class _Outcome:
    tier: str  # the tier blamed
    copy: Lower | None  # the copy compared (None: the DRAM copy)
    diff: Difference
    bound: float
    diverged: bool


class Verifier:
    def __init__(self, index: ChunkIndex, dram: DramRoom, moves: Moves, layouts: Mapping[str, Layout],
                 quarantine: Quarantine, *, slot_check: bool = True) -> None:
        self.index = index
        self.dram = dram
        self.moves = moves
        self.layouts = layouts
        self.quarantine = quarantine
        self.slot_check = slot_check
        self.scratch: dict[int, dict[bytes, Scratch]] = {}  # by session id
        self.counts: dict[tuple[str, str], Counts] = {}  # by (tier blamed, layout id)
        #: Verify commits refused because a scratch slot was not fully written.
        self.not_written = 0
        #: Keys of DRAM copies promoted from a lower tier -> that tier's name.
        self.origins: dict[bytes, str] = {}
        #: Keys of chunks whose bytes here were decoded from a lossy copy -> that codec's bound.
        self.lossy: dict[bytes, float] = {}

    # ------------------------------------------------------------------ reserve

    async def reserve(self, session: Session, layout: Layout, keys: Sequence[bytes], nbytes: int,
                      mask: Sequence[bool] | None = None) -> list[int | None]:
        """A scratch slot per key that is stored in `layout` and servable (None otherwise, or
        where `mask` says False, or when no slot is free now)."""
        check_keys(keys)
        if nbytes != layout.chunk_bytes:
            raise InvalidArgumentError(f"chunk size {nbytes} does not match layout {layout.layout_id} "
                                       f"({layout.chunk_bytes} bytes per chunk)")
        held = self.scratch.setdefault(session.id, {})
        budget = int(self.dram.arena.size * SCRATCH_SHARE) - sum(s.size for s in held.values())
        slots: list[int | None] = []
        for i, key in enumerate(keys):
            c = self.index.get(key)
            if (c is None or c.layout_id != layout.layout_id or key in held or (mask is not None and not mask[i])
                    or not self.quarantine.serves(c) or budget < nbytes):
                slots.append(None)
                continue
            slot = await self.dram.alloc_slot(nbytes, time.monotonic(), namespace=c.namespace,
                                              has_lower=bool(self.index.lowers),
                                              writedown_failing=self.moves.writedown_failing)
            if slot is None:
                slots.append(None)
                continue
            armed = canary.arm(self.dram.arena.view(slot, nbytes)) if self.slot_check else None
            held[key] = Scratch(key, layout.layout_id, slot, nbytes, armed)
            budget -= nbytes
            slots.append(slot)
        return slots

    def abort(self, session: Session, keys: Sequence[bytes]) -> int:
        """Free scratch slots without comparing them."""
        check_keys(keys)
        held = self.scratch.get(session.id, {})
        gone = [held.pop(k) for k in keys if k in held]
        for s in gone:
            self.dram.free_slot(s.slot, s.size)
        return len(gone)

    def close_session(self, session: Session) -> None:
        for s in self.scratch.pop(session.id, {}).values():
            self.dram.free_slot(s.slot, s.size)

    # ------------------------------------------------------------------ commit: compare

    async def commit(self, session: Session, keys: Sequence[bytes], tolerance: float = 0.0) -> dict[str, Any]:
        """Compare each key's scratch slot with the copies the store holds, then free the slots.
        All keys are checked before anything is compared: a key not reserved for verification,
        a repeated key or a bad tolerance fails the whole call and frees nothing."""
        check_keys(keys)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise InvalidArgumentError(f"tolerance {shown(tolerance)}: use a relative error from 0 (byte-exact) "
                                       f"up to, not including, 1 (a bound of 1 accepts zeros for KV)")
        held = self.scratch.get(session.id, {})
        if len(set(keys)) != len(keys):
            raise InvalidArgumentError("a key appears twice in one verify commit")
        for key in keys:
            if key not in held:
                raise NotReservedError(f"key {key.hex()} was not reserved for verification by this connection; "
                                       f"reserve it with verify=true first")
        taken = [held.pop(k) for k in keys]  # ours now: closing the session no longer frees them
        result = {"compared": 0, "diverged": 0, "skipped": 0, "quarantined": []}
        try:
            self._check_written(taken)
            for s in taken:
                outcomes = await self._verify(s, float(tolerance))
                if outcomes is None:
                    result["skipped"] += 1
                    continue
                result["compared"] += 1
                for o in outcomes:
                    result["diverged"] += o.diverged
                    if o.diverged and self.quarantine.diverged(o.tier):
                        result["quarantined"].append(o.tier)
        finally:
            for s in taken:
                self.dram.free_slot(s.slot, s.size)
        return result

    def _check_written(self, taken: Sequence[Scratch]) -> None:
        for s in taken:
            offset = canary.unwritten(self.dram.arena.view(s.slot, s.size), s.canary)
            if offset is not None:
                self.not_written += 1
                raise SlotNotWrittenError(f"key {s.key.hex()}: its scratch slot was committed before it was fully "
                                          f"written (byte {offset} of {s.size}); nothing was compared")

    async def _verify(self, s: Scratch, tolerance: float) -> list[_Outcome] | None:
        """Compare one scratch slot with every copy of its chunk, remove what diverged, count.
        None when the chunk is gone or changed layout meanwhile."""
        c = self.index.get(s.key)
        if c is None or c.layout_id != s.layout_id:
            return None
        await self.moves.settled(c)
        if self.index.get(s.key) is not c:
            return None
        layout = self.layouts[s.layout_id]
        fresh = self.dram.arena.view(s.slot, s.size)
        lossy = self._lossy_bound(c)
        compared: list[tuple[Lower | None, Difference, float]] = []
        with self.moves._claim(c, "verify"):  # nothing moves or evicts it while it is compared
            if c.slot is not None:
                diff = await _off_loop(compare, fresh, self.dram.view(c), layout)
                compared.append((None, diff, max(tolerance, lossy)))
            for lower in list(self.index.lowers):
                if lower.name in c.lower:
                    got = await self._read_lower(c, lower, fresh, layout)
                    if got is not None:
                        diff, codec = got
                        compared.append((lower, diff, max(tolerance, lossy, codec_bound(codec))))
        copies = self._blame(c, compared)
        for o in copies:
            if o.diverged:
                self._remove(c, o)
        merged: dict[str, _Outcome] = {}  # one count per tier and chunk, the worst of its copies
        for o in copies:
            prev = merged.get(o.tier)
            if prev is None or (o.diverged, o.diff.error) > (prev.diverged, prev.diff.error):
                merged[o.tier] = o
        for o in merged.values():
            self.counts.setdefault((o.tier, c.layout_id), Counts()).add(o.diff, o.diverged)
        return list(merged.values())

    async def _read_lower(self, c: Chunk, lower: Lower, fresh: memoryview,
                          layout: Layout) -> tuple[Difference, str] | None:
        """`c`'s copy on `lower`, read and verified by the tier, compared with `fresh`; with the
        codec it was stored with. None if it could not be read (a bad copy is forgotten)."""
        buf = bytearray(c.size)
        try:
            header = await lower.tier.read_into(c.key, memoryview(buf), layout_id=c.layout_id, payload_len=c.size,
                                                stored_bytes=c.lower.get(lower.name))
        except ObjectTierUnavailable as exc:
            log.warning("canary: chunk %s on %s not compared: %s", c.key.hex(), lower.name, exc)
            return None
        except Exception:  # an I/O error: a miss, as on a promotion
            log.exception("canary: reading chunk %s from %s failed", c.key.hex(), lower.name)
            header = None
        if header is None:  # the tier's own checks refused it (and removed it)
            lower.stats.corrupt += 1
            self.index.forget_lower_copy(c, lower)
            return None
        return await _off_loop(compare, fresh, memoryview(buf), layout), header.codec

    def _blame(self, c: Chunk, compared: list[tuple[Lower | None, Difference, float]]) -> list[_Outcome]:
        """Each compared copy with the tier it counts against (see the module docstring)."""
        lower_ok = {lower.name: not diff.diverged(bound) for lower, diff, bound in compared if lower is not None}
        outcomes = []
        for lower, diff, bound in compared:
            diverged = diff.diverged(bound)
            if lower is not None:
                tier = lower.name
            else:  # the DRAM copy: the tier it was promoted from, unless that tier's copy matched
                origin = self.origins.get(c.key)
                tier = origin if origin is not None and not (diverged and lower_ok.get(origin, False)) else DRAM
            outcomes.append(_Outcome(tier, lower, diff, bound, diverged))
        return outcomes

    def _remove(self, c: Chunk, o: _Outcome) -> None:
        """A diverged copy is wrong KV: log it and remove it, so it is never served again."""
        where = DRAM if o.copy is None else o.copy.name
        log.warning("canary: chunk %s on tier %s diverged from recomputed KV (layout %s, relative error %.3g, "
                    "bound %.3g); blamed on %s, copy removed", c.key.hex(), where, c.layout_id, o.diff.error,
                    o.bound, o.tier)
        if o.copy is not None:
            if o.copy.name in c.lower:
                self.moves.writedown.delete_copy(c, o.copy)
        elif c.slot is not None:
            if c.leases or c.moving is not None:
                log.warning("canary: the DRAM copy of chunk %s is held by a reader; it stays until released",
                            c.key.hex())
            else:
                self.dram.drop(c, evicted=False)

    # ------------------------------------------------------------------ what promotions tell it

    def promoted(self, chunks: Sequence[Chunk], before: Mapping[bytes, Sequence[str]]) -> None:
        """After an acquire promoted `chunks`: which tier each DRAM copy came from (the first of
        the tiers that held it `before` that still does), and whether that copy was lossy."""
        for c in chunks:
            if c.slot is None:
                continue
            origin = next((n for n in before.get(c.key, ()) if n in c.lower), None)
            if origin is None:
                continue
            self.origins[c.key] = origin
            bound = codec_bound(_tier_codec(self.index.lower_named(origin)))
            if bound > 0:
                self.lossy[c.key] = max(bound, self.lossy.get(c.key, 0.0))
        if len(self.origins) + len(self.lossy) > 2 * len(self.index) + 4096:
            self._prune()

    def committed(self, key: bytes) -> None:
        """A client's put committed `key`: its DRAM copy is the engine's own bytes."""
        self.origins.pop(key, None)
        self.lossy.pop(key, None)

    def _lossy_bound(self, c: Chunk) -> float:
        """The lossy bound every copy of `c` is held to (0: none of its bytes went through a lossy codec)."""
        bound = self.lossy.get(c.key, 0.0)
        for name in c.lower:
            bound = max(bound, codec_bound(_tier_codec(self.index.lower_named(name))))
        return bound

    def _prune(self) -> None:
        index = self.index
        self.origins = {k: v for k, v in self.origins.items() if (c := index.get(k)) is not None and c.slot is not None}
        self.lossy = {k: v for k, v in self.lossy.items() if k in index}

    # ------------------------------------------------------------------ reports

    def report(self) -> dict[str, Any]:
        """Counts per tier and layout, their totals, and the quarantine."""
        by_tier: dict[str, dict[str, Any]] = {}
        for (tier, layout_id), counts in sorted(self.counts.items()):
            by_tier.setdefault(tier, {})[layout_id] = _finite(asdict(counts))
        totals = Counts()
        for counts in self.counts.values():
            totals.compared += counts.compared
            totals.exact += counts.exact
            totals.within += counts.within
            totals.diverged += counts.diverged
            totals.max_error = max(totals.max_error, counts.max_error)
        return {**_finite(asdict(totals)), "not_written": self.not_written, "by_tier": by_tier,
                "quarantine": self.quarantine.report()}


def _tier_codec(lower: Lower) -> str:
    """The codec a lower tier writes with ("" when it has none)."""
    codec = getattr(lower.tier, "codec", None)  # the LowerTier protocol does not declare it
    return str(getattr(codec, "spec", "") or "")


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """msgpack and JSON carry infinity poorly: an infinite error is reported as -1."""
    return {k: (-1.0 if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


async def _off_loop(fn: Any, *args: Any) -> Any:
    """Run a comparison on a worker thread: it may take milliseconds on a large chunk."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
