"""A real `TieredStore` for tests that drive it on one event loop (a real shared-memory arena,
a real NVMe directory, optionally an in-memory object tier), the put and get a client would do,
and the invariants every interleaving must keep (`check_invariants`)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Sequence

import numpy as np

from tests.conftest import payload_for
from tierd.layout import Layout
from tierd.store import DRAM, TieredStore
from tierd.tiers.nvme.files import NvmeChunkFiles
from tierd.tiers.nvme.format import CHUNK_SUFFIX, TEMP_SUFFIX
from tierd.tiers.nvme.tier import NvmeTier
from tierd.tiers.object.tier import ObjectTier

NVME = "nvme"
OBJECT = "object"


def build_store(root: Path, *, dram_bytes: int, nvme_bytes: int, object_bytes: int = 0,
                quotas: dict[str, int] | None = None, io_threads: int = 2, **kw: object) -> TieredStore:
    """A store with an NVMe tier in `root/nvme` (buffered I/O: tmpfs has no O_DIRECT) and, with
    `object_bytes`, an object tier in memory (obstore's MemoryStore behind the real ObjectTier).
    Call `await store.start()` on the loop that will run it."""
    tiers: list[tuple[object, int]] = [(NvmeTier(NvmeChunkFiles(root / "nvme", direct_io=False), io_threads=io_threads),
                                        nvme_bytes)]
    if object_bytes:
        tiers.append((ObjectTier("memory://", node="test-node"), object_bytes))
    return TieredStore(dram_bytes=dram_bytes, lower_tiers=tiers, io_threads=io_threads,  # type: ignore[arg-type]
                       quotas=quotas, meta_dir=root, **kw)  # type: ignore[arg-type]


async def put(store: TieredStore, layout: Layout, namespace: str, keys: Sequence[bytes], *,
              timeout: float = 5.0, commit: bool = True) -> list[bytes]:
    """Reserve, fill with each key's bytes and commit (or abort) in a session of its own; the keys
    that got a slot. The session is closed whatever happens, as a connection's would be."""
    session = store.open_session("put")
    try:
        slots = await store.reserve(session, layout.layout_id, namespace, keys, layout.chunk_bytes, timeout=timeout)
        got = [k for k, s in zip(keys, slots) if s is not None]
        for key, slot in zip(keys, slots):
            if slot is not None:
                np.copyto(np.frombuffer(store.arena.view(slot, layout.chunk_bytes), dtype=np.uint8),
                          payload_for(key, layout.chunk_bytes))
        if commit:
            store.commit(session, got)
        return got
    finally:
        store.close_session(session)


async def get(store: TieredStore, layout: Layout, keys: Sequence[bytes]) -> list[bytes]:
    """Acquire, check every served chunk is byte-identical to what was put, release. The keys served."""
    session = store.open_session("get")
    try:
        lease, slots = await store.acquire(session, layout.layout_id, keys, prefix_only=False)
        served = []
        for key, slot in zip(keys, slots):
            if slot is None:
                continue
            got = np.frombuffer(store.arena.view(slot, layout.chunk_bytes), dtype=np.uint8)
            assert np.array_equal(got, payload_for(key, layout.chunk_bytes)), f"chunk {key.hex()} served wrong bytes"
            served.append(key)
        store.release(session, lease)
        return served
    finally:
        store.close_session(session)


def nvme_files(store: TieredStore) -> dict[bytes, int]:
    """The chunk files on disk: key -> st_size."""
    root = store.index.lower_named(NVME).tier.root  # type: ignore[attr-defined]
    return {bytes.fromhex(p.name.removesuffix(CHUNK_SUFFIX)): p.stat().st_size
            for p in root.glob(f"*/*{CHUNK_SUFFIX}")}


def nvme_temp_files(store: TieredStore) -> list[Path]:
    root = store.index.lower_named(NVME).tier.root  # type: ignore[attr-defined]
    return list(root.glob(f"*/*{TEMP_SUFFIX}"))


async def settle(store: TieredStore, timeout: float = 10.0) -> None:
    """Wait until no move, copy, deletion, upload or demotion is under way (the accounting of
    writes in flight is then settled too); a demoter backing off (its writes all failed, e.g.
    the tier below is full of pinned chunks) counts as quiet. Polls the loop, never sleeps a
    fixed time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    def busy() -> bool:
        return bool(store.moves.in_flight or store.moves._background or store.writedown.deleting
                    or store.uploads_in_flight or len(store.uploads) or store.dram_room.room_waiters
                    or store.demoter.state == "working"
                    or (store.demoter.state == "waiting" and store.dram_room.pressure.is_set()))

    quiet = 0
    while quiet < 3:  # quiet for three polls in a row: nothing was about to start either
        quiet = 0 if busy() else quiet + 1
        if loop.time() > deadline:
            raise TimeoutError(f"store did not settle in {timeout}s: moves {dict(store.moves.in_flight)}, "
                               f"background copies {len(store.moves._background)}, "
                               f"deleting {len(store.writedown.deleting)}, uploads queued {len(store.uploads)} "
                               f"in flight {store.uploads_in_flight}, pressure {store.dram_room.pressure.is_set()}, "
                               f"room waiters {store.dram_room.room_waiters}, demoter {store.demoter.state}")
        await asyncio.sleep(0.001)


def check_invariants(store: TieredStore, quotas_of: Sequence[str] = ()) -> None:
    """What must hold whenever the store is settled (see `settle`): every tier's used bytes are
    the sum of its copies' sizes (NVMe's also the files on disk), counters and eviction orders
    match the index, quotas are kept and their bookkeeping is exact, nothing is in flight, no
    reservation or lease outlives its session, and every background task is alive."""
    assert store.background_alive(), "a background task died"
    assert not store.moves.in_flight, dict(store.moves.in_flight)
    chunks = list(store.index.values())
    assert all(c.moving is None for c in chunks)
    # sessions: every one was closed by its op, and took its reservations and leases with it
    assert not store.sessions.open
    assert not store.index.reserved
    assert all(c.leases == 0 for c in chunks), [c.key.hex() for c in chunks if c.leases]
    # DRAM: slots are the index's chunks, nothing else
    in_dram = [c for c in chunks if c.slot is not None]
    assert store.alloc.used == sum(store.alloc.rounded(c.size) for c in in_dram)
    assert store.dram.chunks == len(in_dram)
    assert len({c.slot for c in in_dram}) == len(in_dram)
    assert set(store.dram_room.policy.candidates()) == {c.key for c in in_dram}
    assert set(store.index.clean) == {c.key for c in in_dram if c.declined or store.index.written_down(c)}
    assert store.index.clean_bytes == sum(c.size for c in in_dram if c.key in store.index.clean)
    # each lower tier: used bytes are its copies' bytes; NVMe's copies are exactly the files on disk
    for lower in store.lower:
        copies = {c.key: c.lower[lower.name] for c in chunks if lower.name in c.lower}
        assert lower.stats.chunks == len(copies), (lower.name, lower.stats.chunks, len(copies))
        owned = {k: n for k, n in copies.items() if lower.owns(k)}
        assert lower.stats.used_bytes == sum(owned.values()), (lower.name, lower.stats.used_bytes, owned)
        assert lower.stats.used_bytes <= lower.stats.capacity_bytes
        if lower.name == NVME:
            assert set(lower.policy.candidates()) == set(copies)
            assert nvme_files(store) == copies, "NVMe index and files on disk differ"
            assert not nvme_temp_files(store)
    # every chunk in the index has a copy somewhere; codes follow the copies
    for c in chunks:
        assert c.tiers, f"chunk {c.key.hex()} indexed with no copy"
        expected = 0 if c.slot is not None else 1 + next(i for i, l in enumerate(store.lower) if l.name in c.lower)
        assert c.tier_code == expected
    # quotas: bookkeeping equals the copies, and no namespace is over its limit on a local tier
    for ns in {c.namespace for c in chunks} | set(quotas_of):
        dram_bytes = sum(c.size for c in in_dram if c.namespace == ns)
        assert store.quotas.used(DRAM, ns) == dram_bytes, (ns, store.quotas.used(DRAM, ns), dram_bytes)
        for lower in store.lower:
            if lower.shared:
                continue
            on_tier = sum(c.lower.get(lower.name, 0) for c in chunks if c.namespace == ns)
            assert store.quotas.used(lower.name, ns) == on_tier, (ns, lower.name)
            limit = store.quotas.limits.get(ns)
            if limit is not None:
                assert on_tier <= limit and dram_bytes <= limit, (ns, lower.name, on_tier, dram_bytes, limit)
