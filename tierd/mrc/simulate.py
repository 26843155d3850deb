"""Replaying a trace through a real eviction policy: the hit ratio a tier of a given capacity
would have had under that policy.

The policies are the store's own classes (`tierd.policies`), driven exactly as the store drives
them: a request's chunks are touched in prompt order with their depth, and while a new chunk
does not fit, the first of `candidates()` is removed. Capacities are in chunks (the Mooncake
traces' blocks). Two counts per run:

- block hits: chunks present when their request arrived;
- prefix hits: the leading run of present chunks only, which is what an engine can use (a
  chunk after a missing one is recomputed anyway).

`simulate_tiers` adds a tier below (DRAM over NVMe): a chunk evicted from the first tier is
written to the second if the admission filter admits it, and the bytes written there (in
chunks) are counted, for the SSD-endurance side of admission.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

from tierd.policies.admission import AdmitAll
from tierd.policies.base import EvictionPolicy


class HitRatios:
    """Block- and prefix-level hit ratios from a result's counts (simulated or optimal)."""

    __slots__ = ()
    references: int
    block_hits: int
    prefix_hits: int

    @property
    def block_hit_ratio(self) -> float:
        return self.block_hits / self.references if self.references else 0.0

    @property
    def prefix_hit_ratio(self) -> float:
        return self.prefix_hits / self.references if self.references else 0.0


@dataclass(slots=True)
class SimResult(HitRatios):
    policy: str
    capacity: int
    references: int = 0
    block_hits: int = 0
    prefix_hits: int = 0
    #: chunks written to the lower tier (`simulate_tiers` only)
    lower_writes: int = 0
    #: hits served by the lower tier (`simulate_tiers` only; counted in the hits above too)
    lower_hits: int = 0


def _insert(policy: EvictionPolicy, capacity: int, key: Hashable, depth: int) -> list[Any]:
    """Add `key` to a full-or-not tier, evicting in the policy's order; returns the evicted keys."""
    evicted = []
    while len(policy) >= capacity:
        victim = next(policy.candidates())
        policy.remove(victim)
        evicted.append(victim)
    policy.touch(key, "", depth)  # type: ignore[arg-type]
    return evicted


def simulate(requests: Iterable[Sequence[Hashable]], policy: EvictionPolicy, capacity: int) -> SimResult:
    """Replay `requests` (each a prompt's chunk keys, in order) through `policy` at `capacity` chunks."""
    if capacity < 1:
        raise ValueError("capacity must be at least one chunk")
    result = SimResult(policy.name, capacity)
    for keys in requests:
        leading = True
        for depth, key in enumerate(keys):
            result.references += 1
            if key in policy:
                result.block_hits += 1
                result.prefix_hits += leading
                policy.touch(key, "", depth)  # type: ignore[arg-type]
            else:
                leading = False
                _insert(policy, capacity, key, depth)
    return result


def simulate_tiers(requests: Iterable[Sequence[Hashable]], upper: EvictionPolicy, upper_capacity: int,
                   lower: EvictionPolicy, lower_capacity: int, admission: Any = None) -> SimResult:
    """DRAM (`upper`) over NVMe (`lower`): a hit in either counts; a lower-tier hit is copied up
    (the lower copy stays, as the store keeps it); a chunk evicted from the upper tier without a
    lower copy is written down when `admission.admits(key, hits, depth=..., stored=False)` says so
    (every DRAM victim is shown to the filter, one with a lower copy with `stored=True`)."""
    admission = admission if admission is not None else AdmitAll()
    result = SimResult(upper.name, upper_capacity)
    hits: dict[Hashable, int] = {}
    depths: dict[Hashable, int] = {}
    for keys in requests:
        leading = True
        for depth, key in enumerate(keys):
            result.references += 1
            if key in upper:
                hits[key] += 1
                upper.touch(key, "", depth)  # type: ignore[arg-type]
            elif key in lower:
                result.lower_hits += 1
                lower.touch(key, "", depth)  # type: ignore[arg-type]
                hits[key] = 1
                _evict_into(upper, upper_capacity, key, depth, lower, lower_capacity, admission, hits, depths, result)
            else:
                leading = False
                hits[key] = 0
                _evict_into(upper, upper_capacity, key, depth, lower, lower_capacity, admission, hits, depths, result)
                continue
            result.block_hits += 1
            result.prefix_hits += leading
    return result


def _evict_into(upper: EvictionPolicy, upper_capacity: int, key: Hashable, depth: int, lower: EvictionPolicy,
                lower_capacity: int, admission: Any, hits: dict[Hashable, int], depths: dict[Hashable, int],
                result: SimResult) -> None:
    for victim in _insert(upper, upper_capacity, key, depth):
        used = hits.pop(victim, 0)
        victim_depth = depths.pop(victim, 0)
        if lower_capacity <= 0:
            continue
        stored = victim in lower
        if admission.admits(victim, used, depth=victim_depth, stored=stored) and not stored:
            _insert(lower, lower_capacity, victim, 0)
            result.lower_writes += 1
    depths[key] = depth
