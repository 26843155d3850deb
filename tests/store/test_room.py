"""How DRAM makes room (issue 22, item 2): no capacity is thrown away, and the tier below admits
only what is worth its writes (item 3). Real stores (shared-memory arena, NVMe directory) on the
test's loop.

The old demoter dropped DRAM from its 0.95 high watermark down to 0.85 ahead of need, so with no
tier below DRAM ran 85-95% full; with a tier below, it freed demoted chunks at once. Each test
here fails on that code: see its docstring.
"""
from __future__ import annotations

import numpy as np

from tests.conftest import SMALL
from tests.store.stores import NVME, build_store, check_invariants, get, nvme_files, put, settle
from tierd.keys import chunk_keys
from tierd.policies import make_policy
from tierd.policies.admission import ReuseAdmission
from tierd.store import DRAM, TieredStore

CHUNK = SMALL.chunk_bytes


def _keys(seed: int, n: int) -> list[bytes]:
    return chunk_keys(SMALL, np.random.default_rng(seed).integers(0, 32000, 256 * n))


def _dram_only_store(tmp_path, chunks: int, **kw: object) -> TieredStore:
    return TieredStore(dram_bytes=chunks * CHUNK, meta_dir=tmp_path, **kw)  # type: ignore[arg-type]


async def test_with_nothing_below_dram_fills_completely_and_evicts_one_chunk_per_put(tmp_path):
    """Old code: the 20th chunk of a 20-chunk DRAM passed the 0.95 watermark and the demoter
    dropped three (down to 0.85) although nothing needed the room."""
    store = _dram_only_store(tmp_path, 20)
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(1, 24)
        for key in keys[:20]:
            assert await put(store, SMALL, "default", [key]) == [key]
            await settle(store)
        assert all(k in store.index for k in keys[:20])
        assert store.alloc.used == 20 * store.alloc.rounded(CHUNK)
        assert store.dram.evictions == 0
        for i, key in enumerate(keys[20:], 1):  # each put needs one slot: exactly one chunk leaves
            assert await put(store, SMALL, "default", [key]) == [key]
            await settle(store)
            assert store.dram.evictions == i
            assert [k for k in keys[:20] if k not in store.index] == keys[:i]  # LRU: the oldest first
        check_invariants(store)
    finally:
        await store.close(flush=False)


async def test_the_demoter_writes_down_but_keeps_the_dram_copy(tmp_path):
    """Old code: a demoted chunk left DRAM at once, so after the write-back DRAM held 85% and the
    next get of a demoted chunk was a promotion. Now the cold end is written down and kept: DRAM
    stays full, the copies are clean, and a put that needs room drops one at once."""
    store = build_store(tmp_path, dram_bytes=20 * CHUNK, nvme_bytes=64 * CHUNK * 2)
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(2, 20)
        for i in range(0, 20, 2):
            assert await put(store, SMALL, "default", keys[i:i + 2]) == keys[i:i + 2]
        await settle(store)
        assert all(store.index[k].slot is not None for k in keys)  # nothing left DRAM
        written = [k for k in keys if NVME in store.index[k].lower]
        assert written == keys[: len(written)] and len(written) >= 3  # the coldest, in LRU order
        assert store.dram_room.dirty_bytes() <= 0.85 * store.alloc.size
        assert set(nvme_files(store)) == set(written)
        more = _keys(3, 2)
        assert await put(store, SMALL, "default", more) == more  # room at once from clean copies
        assert [k for k in keys if store.index[k].slot is None] == keys[:2]
        assert await get(store, SMALL, keys[:2]) == keys[:2]  # served back from NVMe
        await settle(store)
        check_invariants(store)
    finally:
        await store.close(flush=False)


async def test_a_small_tier_below_does_not_make_the_demoter_write_forever(tmp_path):
    """A tier below smaller than DRAM's cold end: evicting a copy whose chunk is still in DRAM
    would make it dirty again and the demoter would write it again, for ever. The tier evicts
    copies not backing a DRAM chunk instead, and the store settles."""
    store = build_store(tmp_path, dram_bytes=20 * CHUNK, nvme_bytes=2 * (CHUNK + 16384))
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(4, 40)
        for i in range(0, 40, 2):
            assert await put(store, SMALL, "default", keys[i:i + 2]) == keys[i:i + 2]
        await settle(store)
        check_invariants(store)
        assert store.index.lower_named(NVME).stats.chunks <= 2
        assert store.dram.demotions < 40
    finally:
        await store.close(flush=False)


async def test_reuse_admission_keeps_one_time_chunks_off_nvme(tmp_path):
    """With `reuse` admission only chunks used a second time are written down: the chunk read
    back once goes to NVMe, the ones never read do not (and may be dropped at once)."""
    store = build_store(tmp_path, dram_bytes=20 * CHUNK, nvme_bytes=64 * CHUNK * 2,
                        admissions={NVME: ReuseAdmission})
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(5, 30)
        assert await put(store, SMALL, "default", keys[:2]) == keys[:2]
        assert await get(store, SMALL, keys[:1]) == keys[:1]  # used twice: worth a write
        for i in range(2, 30, 2):
            assert await put(store, SMALL, "default", keys[i:i + 2]) == keys[i:i + 2]
            await settle(store)
        assert set(nvme_files(store)) == {keys[0]}
        nvme = store.index.lower_named(NVME)
        assert nvme.admission.declined >= 1 and nvme.admission.admitted == 1
        assert keys[1] not in store.index  # declined, then dropped when room was needed
        row = next(t for t in store.stat()["tiers"] if t["name"] == NVME)
        assert (row["admission"], row["admitted"]) == ("reuse", 1)
        check_invariants(store)
    finally:
        await store.close(flush=False)


async def test_a_hit_makes_a_declined_chunk_worth_writing_down(tmp_path):
    store = build_store(tmp_path, dram_bytes=20 * CHUNK, nvme_bytes=64 * CHUNK * 2,
                        admissions={NVME: ReuseAdmission})
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(6, 20)
        for i in range(0, 20, 2):
            assert await put(store, SMALL, "default", keys[i:i + 2]) == keys[i:i + 2]
        await settle(store)
        declined = [k for k in keys if store.index[k].declined]
        assert declined and not nvme_files(store)
        assert await get(store, SMALL, declined[:1]) == declined[:1]
        assert not store.index[declined[0]].declined and declined[0] not in store.index.clean
        check_invariants(store)
    finally:
        await store.close(flush=False)


async def test_the_store_uses_the_configured_policy_per_tier(tmp_path):
    store = build_store(tmp_path, dram_bytes=8 * CHUNK, nvme_bytes=64 * CHUNK * 2,
                        policies={DRAM: lambda: make_policy("lru"), NVME: lambda: make_policy("lru")})
    assert store.stat()["tiers"][0]["policy"] == "lru"
    await store.close(flush=False)
