"""The store's view of one tier below DRAM: the medium (a `LowerTier`), its counters, the
eviction order of the copies this node may evict there, and whether writing to it works.

A shared tier (the object store) is written by other nodes too: its `used_bytes` and its
eviction order cover only the copies this node wrote (`--object` caps those); copies found
through lookups are indexed but never evicted by this node.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tierd.errors import InvalidArgumentError
from tierd.policies.admission import AdmitAll, Admission
from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy
from tierd.store.chunk import TierStats
from tierd.tiers.base import LowerTier

#: Makes the eviction policy of one tier (the store takes one factory per tier name).
PolicyFactory = Callable[[], EvictionPolicy]


@dataclass(slots=True)
class Lower:
    tier: LowerTier
    stats: TierStats
    #: Eviction order of the copies this node may evict: all of a local tier, only its own
    #: writes on a shared one. Membership is what "ours" means.
    policy: EvictionPolicy = field(default_factory=LRUPolicy)
    #: Which chunks are worth a copy here at all (`--nvme-admission`, `--object-admission`).
    admission: Admission = field(default_factory=AdmitAll)
    #: The last batch of write-downs to this tier all failed (a full or broken disk): waiting
    #: for room in DRAM is pointless until one succeeds, so puts and promotions miss at once.
    failing: bool = False
    #: Set when a copy leaves this tier: room appeared, a failing write-down is worth retrying.
    room_freed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.tier.name

    @property
    def shared(self) -> bool:
        return self.tier.shared

    def owns(self, key: bytes) -> bool:
        """Whether this node wrote (and so counts and may evict) the copy of `key` here."""
        return key in self.policy


def build_lowers(tiers: Sequence[tuple[LowerTier, int]], policies: dict[str, PolicyFactory] | None = None,
                 admissions: dict[str, Callable[[], Admission]] | None = None) -> list[Lower]:
    """The lower tiers in order. A tier of capacity 0 is left out, except a shared one: this
    node then only reads what others wrote."""
    policies = policies or {}
    admissions = admissions or {}
    lowers = [Lower(t, TierStats(t.name, cap), policies.get(t.name, LRUPolicy)(),
                    admissions.get(t.name, AdmitAll)())
              for t, cap in tiers if cap > 0 or t.shared]
    if any(l.shared for l in lowers[:-1]):
        raise InvalidArgumentError("a shared (object) tier must be the last tier")
    return lowers
