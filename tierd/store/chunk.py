"""The records the store keeps: a committed chunk, a reservation, a lease, a session, a tier's
counters — and the checks every entry point applies to keys and namespaces.

These are plain data. Who may change which field is fixed (see the package docstring): a
chunk's `moving` belongs to `moves`, its `slot` to `dram`, its `lower` copies to `index` and
`writedown`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

from tierd.errors import InvalidArgumentError, shown
from tierd.keys import KEY_BYTES, check_namespace

DRAM = "dram"
ABSENT = 255  # tier code of a key that is not stored


@dataclass(slots=True, eq=False)
class Chunk:
    """Metadata of one committed chunk. `tier_code` is the index of its fastest tier (0 = DRAM,
    then the lower tiers in order); the index updates it whenever a copy comes or goes, so a
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
    lower: dict[str, int] = field(default_factory=dict)  # tier name -> bytes its copy occupies there
    leases: int = 0
    moving: asyncio.Future[bool] | None = None  # set and cleared by `moves` alone
    tier_code: int = ABSENT
    position: int = 0  # index of this chunk in the prompt that wrote it (for admission)
    #: The first lower tier's admission declined it: DRAM drops it without writing it down,
    #: unless a hit makes it worth keeping first (`DramRoom.touch` clears this).
    declined: bool = False

    @property
    def tiers(self) -> list[str]:
        return ([DRAM] if self.slot is not None else []) + list(self.lower)

    def evictable(self) -> bool:
        return not self.pinned and self.leases == 0 and self.moving is None


#: Stands in for a key that is not in the index, so a lookup maps keys to codes without branching.
ABSENT_CHUNK = Chunk(b"", "", "", 0, 0.0, 0.0)


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
    """A put in progress: a DRAM slot (and its quota bytes) held for a key not yet visible."""

    key: bytes
    layout_id: str
    namespace: str
    slot: int
    size: int
    position: int
    #: The canary armed in the slot (`tierd.store.canary`); None when slot checks are off.
    canary: int | None = None


@dataclass(slots=True)
class Lease:
    """Chunks a get holds in DRAM while the client copies them out."""

    id: int
    chunks: list[Chunk]


@dataclass(slots=True)
class Session:
    """What one client connection holds; all of it is returned when the connection closes."""

    id: int
    name: str
    reservations: dict[bytes, Reservation] = field(default_factory=dict)
    leases: dict[int, Lease] = field(default_factory=dict)


def check_keys(keys: Sequence[Any]) -> None:
    """Keys are KEY_BYTES-long bytes; anything else from a client is refused before it is used."""
    if set(map(type, keys)) - {bytes} or set(map(len, keys)) - {KEY_BYTES}:
        bad = next(k for k in keys if not isinstance(k, bytes) or len(k) != KEY_BYTES)
        raise InvalidArgumentError(
            f"key {shown(bad)}: keys are {KEY_BYTES}-byte binary values (tierd.keys.chunk_keys makes them)"
        )


__all__ = ["ABSENT", "ABSENT_CHUNK", "DRAM", "Chunk", "Lease", "Reservation", "Session", "TierStats",
           "check_keys", "check_namespace"]
