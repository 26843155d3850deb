"""Quarantined tiers: tiers the live canary caught serving KV that differs from a recompute.

The canary (`tierd.store.verify`) counts, per tier, the copies whose bytes diverged from what a
sampled request recomputed. When a tier's count since its last clear reaches `after`
(`--quarantine-after`), the tier is quarantined: its chunks are not served until an operator
runs `tierd quarantine clear`. One bad copy may be bad luck (and is removed at once); several
say the tier itself is suspect (a disk that returns other bytes under a valid checksum, a codec
bug, something scribbling over the arena), and its other copies, which no sample has looked at
yet, cannot be trusted either.

What "not served" means, cheaply:

- a lookup maps the tier codes of quarantined tiers to ABSENT with one `bytes.translate` over
  the codes it already has (`mask`), so the leading run stops at the first chunk whose fastest
  copy is in such a tier;
- an acquire treats such a chunk as absent (`serves`), so nothing is promoted from the tier;
- a put may store such a chunk again (`replaceable`): the engine recomputed it, and its fresh
  DRAM copy replaces the suspect copies (`suspect_copies` names them for deletion), so the
  cache refills with good KV while the tier stays quarantined.

Writes to a quarantined tier go on (demotion, uploads): a chunk written there after the fault
is as good as the tier's medium, and `quarantine clear` makes it servable again.

The set of quarantined tiers survives a restart (a small JSON file beside the store's
metadata): a daemon restarted on a disk that served wrong KV must not serve it again unasked.
Divergence counts themselves are not kept across restarts.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tierd.errors import InvalidArgumentError, shown
from tierd.store.chunk import ABSENT, Chunk

log = logging.getLogger(__name__)

FILE_NAME = "tierd-quarantine.json"


@dataclass(slots=True)
class Entry:
    """One quarantined tier: since when, and why."""

    since: float
    diverged: int
    reason: str


class Quarantine:
    """Which tiers are quarantined, and the divergences that lead there. `names` are the tier
    names by tier code (DRAM first); `after` 0 never quarantines (divergences are still counted
    and their copies removed)."""

    def __init__(self, names: Sequence[str], after: int, path: Path | None = None) -> None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidArgumentError(f"quarantine_after {shown(after)}: use a whole number of divergences >= 0")
        self.names = list(names)
        self.after = after
        self.path = path
        self.entries: dict[str, Entry] = {}
        #: Divergences per tier since its last clear (what `after` is compared with).
        self.strikes: dict[str, int] = {}
        #: Tier codes to mask, and the translate table that maps them to ABSENT (None: none).
        self.codes: frozenset[int] = frozenset()
        self.table: bytes | None = None
        self._load()

    # ------------------------------------------------------------------ the data path's checks

    def mask(self, prefix: int, codes: bytes) -> tuple[int, bytes]:
        """A lookup's answer with quarantined tiers' chunks absent."""
        if self.table is None:
            return prefix, codes
        codes = codes.translate(self.table)
        first = codes.find(ABSENT)
        return (len(codes) if first < 0 else first), codes

    def serves(self, c: Chunk) -> bool:
        """Whether `c` may be served: its fastest copy is not in a quarantined tier."""
        return c.tier_code not in self.codes

    def replaceable(self, c: Chunk) -> bool:
        """Whether a put may store `c` afresh: no DRAM copy, its fastest copy quarantined, and
        nothing holds or moves it."""
        return c.slot is None and c.tier_code in self.codes and c.evictable()

    def suspect_copies(self, c: Chunk) -> list[str]:
        """The tiers of `c`'s copies that are quarantined (a fresh copy makes them redundant)."""
        return [name for name in c.lower if name in self.entries]

    # ------------------------------------------------------------------ divergences and clearing

    def diverged(self, tier: str) -> bool:
        """Count one divergence of `tier`; True if that put the tier in quarantine just now."""
        self.strikes[tier] = self.strikes.get(tier, 0) + 1
        if not self.after or tier in self.entries or self.strikes[tier] < self.after:
            return False
        self.add(tier, f"{self.strikes[tier]} copies diverged from recomputed KV (--quarantine-after {self.after})")
        return True

    def add(self, tier: str, reason: str) -> None:
        self._check(tier)
        self.entries[tier] = Entry(time.time(), self.strikes.get(tier, 0), reason)
        log.error("tier %s quarantined: %s; its chunks are not served until `tierd quarantine clear`", tier, reason)
        self._changed()

    def clear(self, tiers: Iterable[str] | None = None) -> list[str]:
        """Lift the quarantine of `tiers` (all when None) and reset their divergence counts;
        returns the tiers that were quarantined."""
        names = list(self.entries) if tiers is None else list(tiers)
        for name in names:
            self._check(name)
        cleared = [n for n in names if n in self.entries]
        for name in names:
            self.entries.pop(name, None)
            self.strikes.pop(name, None)
        if cleared:
            log.warning("quarantine of %s cleared by the operator", ", ".join(cleared))
        self._changed()
        return cleared

    def report(self) -> dict[str, Any]:
        return {"after": self.after, "tiers": {n: asdict(e) for n, e in self.entries.items()},
                "strikes": dict(self.strikes)}

    # ------------------------------------------------------------------ helpers

    def _check(self, tier: str) -> None:
        if tier not in self.names:
            raise InvalidArgumentError(f"tier {shown(tier)}: use one of {self.names}")

    def _changed(self) -> None:
        self.codes = frozenset(self.names.index(n) for n in self.entries)
        if self.codes:
            table = bytearray(range(256))
            for code in self.codes:
                table[code] = ABSENT
            self.table = bytes(table)
        else:
            self.table = None
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({n: asdict(e) for n, e in self.entries.items()}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not record the quarantine in %s: %s", self.path, exc)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            entries = {n: Entry(float(e["since"]), int(e["diverged"]), str(e["reason"])) for n, e in saved.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring an unreadable quarantine file %s: %s", self.path, exc)
            return
        unknown = sorted(set(entries) - set(self.names))
        if unknown:
            log.warning("quarantine file %s names tiers this daemon does not have: %s", self.path, unknown)
        self.entries = {n: e for n, e in entries.items() if n in self.names}
        for name, e in self.entries.items():
            log.error("tier %s is still quarantined (since %s: %s); run `tierd quarantine clear` once it is fixed",
                      name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.since)), e.reason)
        self._changed()
