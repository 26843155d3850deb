"""The tiered store: one index over a shared-memory DRAM arena and the tiers below it.

This is the whole cache. The daemon serves it over a socket; embedded mode calls it in-process.
`TieredStore` (tiered.py) puts the parts together; each part owns one piece of state:

    chunk.py      the records: Chunk, Reservation, Lease, Session, TierStats; key checks
    index.py      key -> chunk; which tiers hold a copy; a prompt's leading run
    sessions.py   reserve/commit (put) and acquire/release (get), owned by a client connection
    lookup.py     lookups, their counters and observers, the shared tier's prefix probe
    dram.py       DRAM room: slots, pressure, which chunk leaves DRAM (DRAM eviction)
    moves.py      the ONLY owner of a chunk's in-flight state: demote, promote, copy down,
                  hand down, flush, evict all claim the chunk there
    demoter.py    the background task that writes DRAM down under pressure
    writedown.py  a chunk written to a lower tier: the tier's room and quota, admission, deletes
    uploads.py    the write-through/write-back queue to the shared object tier, and its workers
    persist.py    metadata written at shutdown, read at start
    quotas.py     per-namespace byte quotas (bookkeeping)
    report.py     stat / ls / inspect (read-only views)
    verify.py     the live canary: fresh KV compared with every stored copy, blame, removal
    divergence.py how far two copies of a chunk differ; the bounds (lossless, lossy codecs)
    quarantine.py tiers the canary caught serving wrong KV: masked from lookups and acquires

Ownership rules (the invariants everything else relies on):

- A DRAM slot belongs to exactly one of: the allocator's free list, a reservation (a put in
  progress, invisible to lookups), or a committed chunk in the index.
- A chunk is in the index once committed, and stays there while at least one tier holds a copy.
- A chunk with leases, a pin, or a move in flight is never evicted or moved; a chunk is in at
  most one move at a time (`Moves.in_flight`).
- Every reservation and lease belongs to a `Session`; closing it returns all of them.
- Eviction from DRAM demotes to the first lower tier in the background (write-back): the DRAM
  slot is freed only after the lower copy is durable. A hit on a lower tier promotes into DRAM.
- Each tier's used bytes (writes in flight included) never exceed its capacity, and a
  namespace's bytes on a local tier never exceed its quota: room is charged before any await.
- The background tasks are supervised: one that dies is logged and restarted.

All methods run on one asyncio loop; the tiers do their blocking I/O in their own threads.
"""
from tierd.store.chunk import ABSENT, DRAM, Chunk, Lease, Reservation, Session, TierStats
from tierd.store.lookup import LookupObserver
from tierd.store.tiered import TieredStore

__all__ = ["ABSENT", "DRAM", "Chunk", "Lease", "LookupObserver", "Reservation", "Session", "TierStats",
           "TieredStore"]
