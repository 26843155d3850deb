"""The chunk index: key -> chunk, which tiers hold a copy of each, and the leading run of a
prompt's keys.

A chunk is in the index once committed (or found on the shared tier) and stays while at least
one tier holds a copy. The index is the one place that records a lower-tier copy coming or
going, and it keeps two things derived from that current at once: each chunk's fastest tier
(`tier_code`, read on every lookup) and the set of DRAM copies that may be dropped without a
write-down (`clean`, which DRAM eviction walks). Quota bytes of a lower copy are charged by
whoever claims the room for it (`writedown`, or start-up) and released here when it goes.

Because copies come and go only here and in `dram` (`place`, `drop`), these are also the KV
events' event points (`tierd.events`): `copy_stored` / `copy_removed` tell the feed, when one
is attached, of every copy this node holds or wrote. Copies other nodes wrote to the shared
tier and this node only found are not announced (their writer did), nor is their forgetting.
"""
from __future__ import annotations

import itertools
import operator
import time
from array import array
from typing import TYPE_CHECKING, Sequence

from tierd.store.chunk import ABSENT, ABSENT_CHUNK, DRAM, Chunk, Reservation
from tierd.store.lowers import Lower
from tierd.store.quotas import NamespaceQuotas
from tierd.tiers.base import Found

if TYPE_CHECKING:
    from tierd.events.feed import EventFeed

#: For KV events, a chunk's place in its prompt and its tokens as its put gave them:
#: (the previous chunk's key, its token ids as `tierd.events.wire.keep_tokens` keeps them), None where not known.
Lineage = tuple[bytes | None, array | None]
NO_LINEAGE: Lineage = (None, None)

_tier_code = operator.attrgetter("tier_code")


class ChunkIndex(dict[bytes, Chunk]):
    """The committed chunks by key (a dict, so reports and lookups read it directly), plus the
    reservations of keys being written (invisible to lookups until committed)."""

    def __init__(self, lowers: Sequence[Lower], quotas: NamespaceQuotas) -> None:
        super().__init__()
        self.lowers = list(lowers)
        self.quotas = quotas
        self.reserved: dict[bytes, Reservation] = {}
        #: DRAM chunks that can be dropped at once (a copy exists on the first lower tier, there
        #: is no lower tier, or its admission declined them), with their sizes. Their eviction
        #: order is DRAM's policy; this is membership, and `clean_bytes` their total, so the
        #: demoter knows how much of DRAM still needs writing down.
        self.clean: dict[bytes, int] = {}
        self.clean_bytes = 0
        #: Where copies coming and going are published (`tierd.events`); None: they are not.
        self.events: EventFeed | None = None
        #: Each committed chunk's lineage, while events are published (empty otherwise): kept
        #: for as long as the chunk is indexed, so every copy's BlockStored carries its tokens.
        self.lineage: dict[bytes, Lineage] = {}

    # ------------------------------------------------------------------ event points

    def copy_stored(self, c: Chunk, tier: str) -> None:
        """A copy of `c` is now on `tier` (DRAM: `DramRoom.place`; below: `add_lower_copy`)."""
        events = self.events
        if events is not None:
            parent, tokens = self.lineage.get(c.key, NO_LINEAGE)
            events.stored(tier, c.key, c.layout_id, parent, tokens)

    def copy_removed(self, c: Chunk, tier: str) -> None:
        """The copy of `c` on `tier` is gone (DRAM: `DramRoom.drop`; below: `forget_lower_copy`)."""
        if self.events is not None:
            self.events.removed(tier, c.key)

    # ------------------------------------------------------------------ derived state

    def retier(self, c: Chunk) -> None:
        """After a copy of `c` came or went: its fastest tier, and whether DRAM may drop it at once."""
        if c.slot is not None and (c.declined or self.written_down(c)):
            if c.key not in self.clean:
                self.clean[c.key] = c.size
                self.clean_bytes += c.size
        elif c.key in self.clean:
            self.clean_bytes -= self.clean.pop(c.key)
        if c.slot is not None:
            c.tier_code = 0
            return
        c.tier_code = next((i for i, l in enumerate(self.lowers, 1) if l.name in c.lower), ABSENT)

    def announce_local_gone(self) -> None:
        """At shutdown: every DRAM and local-tier copy leaves with the node (removal events). The
        shared tier's copies stay announced: other nodes still read them from the bucket."""
        local = {l.name for l in self.lowers if not l.shared}
        for c in self.values():
            if c.slot is not None:
                self.copy_removed(c, DRAM)
            for name in [n for n in c.lower if n in local]:
                self.copy_removed(c, name)

    def dirty_bytes(self, used: int) -> int:
        """Of `used` DRAM bytes, those that must be written down before they can be dropped."""
        return used - self.clean_bytes

    def written_down(self, c: Chunk) -> bool:
        """Whether DRAM may drop `c` without writing it down: it has a copy on the first lower tier."""
        return not self.lowers or self.lowers[0].name in c.lower

    def unindex_if_gone(self, c: Chunk) -> None:
        """A chunk whose last copy went is no longer stored (a lease may still hold the object)."""
        if c.slot is None and not c.lower and self.get(c.key) is c:
            del self[c.key]
            if self.lineage:
                self.lineage.pop(c.key, None)

    def local_codes(self, keys: Sequence[bytes]) -> tuple[int, bytes]:
        """(leading run of present keys, tier code of each key). This runs on every request, so
        the per-key work is C-level loops over one attribute."""
        chunks = map(self.get, keys, itertools.repeat(ABSENT_CHUNK))
        codes = bytes(map(_tier_code, chunks))
        prefix = codes.find(ABSENT)
        return (len(codes) if prefix < 0 else prefix), codes

    def lower_named(self, name: str) -> Lower:
        return next(l for l in self.lowers if l.name == name)

    # ------------------------------------------------------------------ lower-tier copies

    def add_lower_copy(self, c: Chunk, lower: Lower, stored: int, *, owned: bool) -> None:
        """A durable copy of `c` (`stored` bytes) is now on `lower`; `owned`: this node wrote it
        (counted in the tier's used bytes and evictable by this node). The caller charged the
        bytes to the tier and quota when it claimed the room."""
        new = lower.name not in c.lower
        # announced: a new copy on a local tier; on the shared tier, one this node wrote
        announce = self.events is not None and (owned and not lower.owns(c.key) if lower.shared else new)
        if new:
            lower.stats.chunks += 1
        c.lower[lower.name] = stored
        if owned:
            lower.policy.touch(c.key, c.namespace, c.position)
        self.retier(c)
        if announce:
            self.copy_stored(c, lower.name)

    def forget_lower_copy(self, c: Chunk, lower: Lower) -> None:
        """`c` no longer has a copy on `lower` (deleted, found bad, or gone from the bucket):
        release its bytes and, if it was the last copy, the chunk."""
        stored = c.lower.pop(lower.name, None)
        if stored is None:
            return
        self.retier(c)
        owned = lower.owns(c.key)
        if owned or not lower.shared:
            self.copy_removed(c, lower.name)
        if owned:
            lower.policy.remove(c.key)
            lower.stats.used_bytes -= stored
            if not lower.shared:
                self.quotas.charge(lower.name, c.namespace, -stored)
                lower.failing = False  # room below: a failing write-down is worth trying again at once
                lower.room_freed.set()
        lower.stats.chunks -= 1
        self.unindex_if_gone(c)

    def move_namespace(self, c: Chunk, namespace: str) -> None:
        """A chunk found on the shared tier turned out to belong to `namespace` (a local commit
        of the same key): its local copies' quota bytes and eviction groups follow it."""
        for name, stored in c.lower.items():
            lower = self.lower_named(name)
            if not lower.shared:
                self.quotas.charge(name, c.namespace, -stored)
                self.quotas.charge(name, namespace, stored)
            if lower.owns(c.key):
                lower.policy.touch(c.key, namespace, c.position)
        c.namespace = namespace

    def index_found(self, found: Sequence[Found], shared: Lower) -> None:
        """Index copies other nodes wrote to the shared tier: readable here, not ours to evict. A
        layout id of "" means not known yet: the first read verifies it."""
        now = time.time()
        for h in found:
            if h.key in self.reserved:
                break  # being written here right now: the local commit wins
            c = self.get(h.key)
            if c is None:
                c = self[h.key] = Chunk(h.key, h.layout_id, h.namespace, h.payload_len, h.created or now, now)
            if shared.name not in c.lower:
                self.add_lower_copy(c, shared, h.object_bytes or shared.tier.stored_bytes(h.payload_len),
                                    owned=False)
