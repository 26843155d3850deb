"""Per-namespace byte quotas on the local tiers (DRAM and NVMe).

Tenants share one daemon. Without quotas, a tenant that writes a lot pushes every other
tenant's chunks out of DRAM and off NVMe (LRU does not know who owns what). With a quota, a
namespace's bytes on each local tier never exceed its limit: when a put or a promotion of that
namespace would go over, the namespace's *own* least recently used chunks on that tier make room
(DRAM chunks are written down first, as any demotion), and if it has none that may move, the
put is simply not cached. A namespace under its quota competes for free room like everyone
else. The object tier is shared across nodes and is not covered.

`NamespaceQuotas` is bookkeeping only: limits, and bytes used per tier and namespace, charged by
the store at the few places where a copy appears or goes. The store decides whom to evict.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

from tierd.errors import InvalidArgumentError


class NamespaceQuotas:
    """Byte limits per namespace (the same limit on each local tier) and current use."""

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        self.limits: dict[str, int] = {}
        for namespace, limit in (limits or {}).items():
            self.set(namespace, limit)
        self._used: dict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        #: Puts and promotions not cached because the namespace was full of chunks that could not move.
        self.refused = 0

    def set(self, namespace: str, limit: int | None) -> None:
        """Set (or with None remove) a namespace's limit."""
        if not isinstance(namespace, str) or not namespace:
            raise InvalidArgumentError(f"quota namespace {namespace!r}: give a non-empty namespace name")
        if limit is None:
            self.limits.pop(namespace, None)
            return
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InvalidArgumentError(f"quota of {namespace!r}: {limit!r} is not a positive number of bytes "
                                       "(use a size like 2GiB, or clear the quota)")
        self.limits[namespace] = limit

    def charge(self, tier: str, namespace: str, nbytes: int) -> None:
        """A copy of `nbytes` (negative: gone) of `namespace` on `tier`."""
        used = self._used[tier]
        used[namespace] += nbytes
        if used[namespace] == 0:
            del used[namespace]

    def used(self, tier: str, namespace: str) -> int:
        return self._used[tier].get(namespace, 0)

    def over(self, tier: str, namespace: str, extra: int) -> bool:
        """Whether `extra` more bytes of `namespace` on `tier` would exceed its limit."""
        limit = self.limits.get(namespace)
        return limit is not None and self.used(tier, namespace) + extra > limit

    def report(self, namespace: str | None = None) -> dict[str, Any]:
        """{namespace: {"limit": bytes or None, "used": {tier: bytes}}} for every namespace with a
        limit or with bytes on a local tier (or just `namespace`)."""
        names = set(self.limits) | {ns for used in self._used.values() for ns in used}
        if namespace is not None:
            names = {namespace}
        return {ns: {"limit": self.limits.get(ns), "used": {tier: used.get(ns, 0) for tier, used in self._used.items()}}
                for ns in sorted(names)}
