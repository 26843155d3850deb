"""The contract of a tier below DRAM (NVMe directory, object store): one typed interface.

The store owns the index, the eviction order and the capacity accounting of every tier; a lower
tier only stores and returns whole chunks by key, and says what its own header records about a
copy. Every operation is a coroutine: a tier on blocking media (NVMe files) runs its I/O in a
thread pool of its own, a tier on a network (the object store) awaits its requests, and the
store awaits both the same way. The store never calls two operations for the same key at once.

A tier must never return bytes that differ from what was written: `read_into` verifies what it
reads and answers None (a miss, the bad copy removed) on any doubt. A tier that cannot be asked
right now (a store that does not answer) raises `tierd.errors.ObjectTierUnavailable`: the copy
stays known, and the caller treats the request as a miss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from tierd.layout import Layout


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What a tier reports about one durable chunk when it rebuilds its index at start."""

    key: bytes
    layout_id: str
    namespace: str
    payload_len: int
    stored_bytes: int
    created: float
    mtime: float


@dataclass(frozen=True, slots=True)
class CopyHeader:
    """What a tier's own (verified) header says about one stored copy: enough to index a copy
    this node has not seen (another node's object) and for `tierd inspect` to show how it is
    stored, without the store knowing any tier's on-disk or on-wire format."""

    key: bytes
    layout_id: str
    namespace: str
    payload_len: int  # the raw chunk's bytes
    stored: int  # bytes of the stored (possibly encoded) payload, without the header
    medium_bytes: int  # what the copy occupies on the medium: file or object, header included
    codec: str  # "" when stored raw
    created: float
    node: str = ""  # the node that wrote it, on a shared tier
    encrypted: bool = False  # sealed with the daemon's key (tierd.tiers.crypto)


@dataclass(frozen=True, slots=True)
class Found:
    """A copy on a shared tier that this node had not indexed. A prefix probe's HEAD gives only
    the size; the layout and namespace are known once a header was read ("" until then)."""

    key: bytes
    payload_len: int  # the raw chunk's size when the header was read; from a HEAD, the stored size
    layout_id: str = ""
    namespace: str = ""
    created: float = 0.0
    object_bytes: int = 0  # the copy's size on the medium, when known (0: not known)


#: How a prefix probe hands what it found to the store (which indexes it at once).
FoundCallback = Callable[[Sequence[Found]], None]


class PrefixProbe(Protocol):
    """Finds how far a locally missing run of chained keys continues on a shared tier."""

    async def extend(self, keys: Sequence[bytes]) -> None:
        """Look for `keys` (a prompt's chunks from the first local miss on), within the probe's
        time budget; what is found goes to the store's callback as soon as it is known."""

    def forget_miss(self, key: bytes) -> None:
        """This node just wrote `key` to the tier: a remembered miss of it is stale."""

    def stats(self) -> dict[str, Any]:
        """Counters for `tierd stat`."""

    async def close(self) -> None:
        """Stop walks still running in the background."""


class LowerTier(Protocol):
    """A tier below DRAM. `shared` tiers (the object store) are written by other nodes too:
    the store counts and evicts only this node's own copies there, and asks the tier's prefix
    probe about keys it has not seen."""

    name: str
    shared: bool

    @property
    def url(self) -> str | None:
        """Where the copies live, for reports and the metadata file (None: a local tier)."""

    def use_layouts(self, layouts: Mapping[str, Layout]) -> None:
        """The layouts registered with the store (a codec needs a chunk's layout to encode and
        decode it); the mapping is live: layouts registered later appear in it."""

    def stored_bytes(self, payload_len: int) -> int:
        """Capacity a raw chunk of this payload size may use, known before writing it (an upper
        bound: a codec may store it smaller; `write` returns what it took)."""

    async def check(self) -> None:
        """Raise a ConfigError now if the tier cannot work at all (a missing bucket)."""

    def retry_after(self) -> float:
        """Seconds until the tier may be asked again (0: now); > 0 while it is known down."""

    async def write(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> int:
        """Store durably (crash-safe); return the bytes the copy occupies, or 0 when a shared
        tier already held the key (another node wrote it). Raise OSError, CapacityError or
        ObjectTierUnavailable on failure."""

    async def read_into(self, key: bytes, dest: memoryview, *, layout_id: str, payload_len: int,
                        stored_bytes: int | None = None) -> CopyHeader | None:
        """Fill `dest` with the verified raw payload and return the copy's header; None (and
        the bad copy removed) on any mismatch. `stored_bytes` is the copy's size on the medium
        when the caller knows it (a hint that saves a round trip on a remote tier)."""

    async def read_header(self, key: bytes) -> CopyHeader | None:
        """The copy's verified header, or None if there is none (or it is bad)."""

    async def delete(self, key: bytes) -> int:
        """Remove the copy; return the bytes freed (0 if it was not there)."""

    async def scan(self) -> list[StoredRecord]:
        """Every intact copy on the medium, for rebuilding the index after a restart (a shared
        tier returns nothing: it is never listed)."""

    def prefix_probe(self, on_found: FoundCallback, *, budget: float) -> PrefixProbe | None:
        """A probe for keys this node has not seen (shared tiers), or None."""

    def stats(self) -> dict[str, Any]:
        """The tier's own counters for `tierd stat` (codec, requests, breaker...)."""

    async def close(self) -> None:
        """Release threads and connections; called once, after the last operation."""
