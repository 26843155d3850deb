"""Races inside the store that only interleavings reach: driven step by step on one event loop
with a real arena and a real NVMe directory (no daemon needed to reach them)."""
from __future__ import annotations

import asyncio

import numpy as np

from tests.conftest import SMALL, payload_for
from tierd.keys import chunk_keys
from tierd.store import TieredStore
from tierd.tiers.nvme.files import NvmeChunkFiles
from tierd.tiers.nvme.tier import NvmeTier


async def _put(store: TieredStore, session, keys) -> None:
    slots = await store.reserve(session, SMALL.layout_id, "default", keys, SMALL.chunk_bytes)
    for key, slot in zip(keys, slots):
        assert slot is not None
        np.copyto(np.frombuffer(store.arena.view(slot, SMALL.chunk_bytes), dtype=np.uint8),
                  payload_for(key, SMALL.chunk_bytes))
    store.commit(session, keys)


async def test_two_acquires_promoting_one_chunk_while_waiting_for_room(tmp_path):
    """Both acquires find the chunk only on NVMe and wait for DRAM room; when room comes, the
    second must see the first's promotion (not start another over it) and both get the bytes."""
    nvme = NvmeTier(NvmeChunkFiles(tmp_path / "nvme"), io_threads=2)
    store = TieredStore(dram_bytes=4 * SMALL.chunk_bytes, lower_tiers=[(nvme, 1 << 30)])
    await store.start()
    try:
        s = store.open_session("t")
        store.register_layout(SMALL)
        target, *fill = chunk_keys(SMALL, np.arange(256 * 6))
        await _put(store, s, [target])
        await store.evict(keys=[target], tier="dram")  # now only on NVMe
        assert store.index[target].slot is None
        await _put(store, s, fill[:4])  # DRAM full of chunks still to be written down
        # Both acquires wait for the demoter to free room; it frees the slots one by one.
        a = asyncio.ensure_future(store.acquire(s, SMALL.layout_id, [target]))
        b = asyncio.ensure_future(store.acquire(s, SMALL.layout_id, [target]))
        (la, sa), (lb, sb) = await asyncio.wait_for(asyncio.gather(a, b), 10)
        assert sa == sb and sa[0] is not None  # one promotion, one slot, shared
        got = bytes(store.arena.view(sa[0], SMALL.chunk_bytes))
        assert got == payload_for(target, SMALL.chunk_bytes).tobytes()
        store.release(s, la)
        store.release(s, lb)
        assert store.dram.promotions == 1
    finally:
        await store.close(flush=False)
