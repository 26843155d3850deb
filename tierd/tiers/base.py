"""The contract of a tier below DRAM (NVMe directory, object store).

The store owns the index, the LRU order and the capacity accounting of every tier; a lower
tier only stores and returns whole chunks by key. All methods BLOCK (file or network I/O): the
store calls them from its I/O thread pool, never on the event loop, and never calls two of them
for the same key at once. A tier must never return bytes that differ from what was written:
`read_into` verifies what it reads and answers False (a miss) on any doubt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol


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


class LowerTier(Protocol):
    name: str

    def stored_bytes(self, payload_len: int) -> int:
        """Exact capacity a chunk of this payload size will use, known before writing it."""

    def write(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> int:
        """Store durably (crash-safe); return stored bytes. Raise OSError/TierdError on failure."""

    def read_into(self, key: bytes, dest: memoryview, *, layout_id: str, payload_len: int) -> bool:
        """Fill `dest` with the verified payload; False (and the bad copy removed) on any mismatch."""

    def delete(self, key: bytes) -> int:
        """Remove the chunk; return bytes freed (0 if it was not there)."""

    def scan(self) -> Iterable[StoredRecord]:
        """Every intact chunk on the medium, for rebuilding the index after a restart."""
