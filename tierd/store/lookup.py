"""Lookups: how many leading chunks of a prompt are stored, and in which tier each one is.

A lookup runs on every engine request, so it reads one attribute per key (the index keeps each
chunk's fastest tier current). When the leading run stops early and there is a shared tier, the
async lookup asks that tier's prefix probe how far it continues there, within the probe's time
budget; what the probe finds joins the index. Chunks whose fastest copy is in a quarantined
tier (`tierd.store.quarantine`) are absent to a lookup. Every lookup is counted per tier and
handed to the observers (the live hit-rate curve, the access trace).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from tierd.store.chunk import TierStats, check_keys
from tierd.store.index import ChunkIndex
from tierd.tiers.base import PrefixProbe

if TYPE_CHECKING:
    from tierd.store.quarantine import Quarantine

#: Called after every lookup with the keys, their tier codes and the leading-hit count.
LookupObserver = Callable[[Sequence[bytes], bytes, int], None]


class Lookups:
    def __init__(self, index: ChunkIndex, stats: Sequence[TierStats], probe: PrefixProbe | None) -> None:
        self.index = index
        self.stats = list(stats)  # by tier code: DRAM first, then the lower tiers
        self.probe = probe
        self.observers: list[LookupObserver] = []
        self.quarantine: Quarantine | None = None  # set by the store
        self.lookups = 0
        self.hits = 0
        self.misses = 0

    def lookup(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """(leading run of stored keys, tier code of each key) from the local index alone."""
        check_keys(keys)
        prefix, codes = self._local(keys)
        return self._observed(keys, codes, prefix)

    async def lookup_async(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """`lookup`, then — if the leading run stops early and there is a shared tier — how far
        it continues there (within the probe's budget)."""
        check_keys(keys)
        prefix, codes = self._local(keys)
        if self.probe is not None and prefix < len(keys) and keys[prefix] not in self.index.reserved:
            await self.probe.extend(keys[prefix:])  # indexes what it finds
            prefix, codes = self._local(keys)
        return self._observed(keys, codes, prefix)

    def _local(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        prefix, codes = self.index.local_codes(keys)
        return self.quarantine.mask(prefix, codes) if self.quarantine is not None else (prefix, codes)

    def _observed(self, keys: Sequence[bytes], codes: bytes, prefix: int) -> tuple[int, bytes]:
        self.lookups += 1
        self.hits += prefix
        self.misses += 1 if prefix < len(codes) else 0
        # Per-tier counts cover the chunks a get would read: the leading run and the first miss.
        read = codes[: prefix + 1]
        below = len(read)  # chunks that reached this tier
        for code, stats in enumerate(self.stats):
            hits = read.count(code)
            stats.hits += hits
            stats.misses += below - hits
            below -= hits
        for observer in self.observers:
            observer(keys, codes, prefix)
        return prefix, codes
