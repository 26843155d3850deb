"""TierdHiCacheStorage against a real daemon subprocess, with SGLang's real base class, config,
key function, storage factory and host pools (MHA and MLA; layer_first, page_first,
page_first_direct)."""
from __future__ import annotations

import json
from typing import Any

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageExtraInfo
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
from sglang.srt.mem_cache.utils import get_hash_str

from connectors.sglang.backend import TierdHiCacheStorage
from tests.connectors.sglang.conftest import BackendFactory
from tests.connectors.sglang.pools import PAGE, fill_random, make_pool, storage_config
from tierd.client import Client

REGISTRATION = {"backend_name": "tierd", "module_path": "connectors.sglang.backend",
                "class_name": "TierdHiCacheStorage", "interface_v1": 1}


def page_keys(n: int, salt: int = 0) -> list[str]:
    """SGLang's own chained SHA-256 page keys for n pages of a prompt."""
    return get_hash_str([salt * 100_000 + t for t in range(n * PAGE)], None, page_size=PAGE)


def pages_of(pool: Any, indices: torch.Tensor) -> list[bytes]:
    return [pool.get_data_page(int(indices[i]), flat=True).view(torch.uint8).numpy().tobytes()
            for i in range(0, indices.numel(), PAGE)]


def test_is_a_hicache_storage_made_by_sglangs_dynamic_factory(daemon: Any) -> None:
    pool = make_pool("mha", "page_first")
    extra = json.loads(json.dumps({**REGISTRATION, "socket": daemon.socket}))  # as SGLang parses the CLI JSON
    backend = StorageBackendFactory.create_backend("dynamic", storage_config(extra), pool)
    try:
        assert isinstance(backend, TierdHiCacheStorage) and isinstance(backend, HiCacheStorage)
        backend.register_mem_pool_host(pool)  # what SGLang's cache controller does next
        fill_random(pool, 1)
        idx = pool.alloc(2 * PAGE)
        keys = page_keys(2)
        assert backend.batch_set_v1(keys, idx) == [True, True]
        assert backend.batch_exists(keys, HiCacheStorageExtraInfo()) == 2
    finally:
        backend.close()


def test_v1_round_trip_is_byte_identical(daemon: Any, backend_factory: BackendFactory, pool: Any, kind: str) -> None:
    b = backend_factory(daemon.socket, pool, mla=kind == "mla")
    fill_random(pool, 2)
    src = pool.alloc(5 * PAGE)
    want = pages_of(pool, src)
    keys = page_keys(5)
    assert b.batch_set_v1(keys, src) == [True] * 5
    dst = pool.alloc(5 * PAGE)
    pool.kv_buffer.view(torch.uint8).zero_()  # the source pages too: only the store can refill dst
    assert b.batch_get_v1(keys, dst) == [True] * 5
    assert pages_of(pool, dst) == want
    # a second write of the same pages is a success that stores nothing new
    stat_before = Client.connect(daemon.socket, map_arena=False)
    try:
        chunks = stat_before.stat()["tiers"][0]["chunks"]
        assert b.batch_set_v1(keys, src) == [True] * 5
        assert stat_before.stat()["tiers"][0]["chunks"] == chunks
    finally:
        stat_before.close()


def test_pages_written_from_one_layout_read_back_in_another(daemon: Any, backend_factory: BackendFactory, kind: str) -> None:
    a, b = make_pool(kind, "layer_first"), make_pool(kind, "page_first")
    wa, rb = backend_factory(daemon.socket, a, mla=kind == "mla"), backend_factory(daemon.socket, b, mla=kind == "mla")
    fill_random(a, 3)
    ia, ib = a.alloc(3 * PAGE), b.alloc(3 * PAGE)
    keys = page_keys(3, salt=1)
    assert wa.batch_set_v1(keys, ia) == [True] * 3
    assert rb.batch_get_v1(keys, ib) == [True] * 3
    for i in range(3):  # same KV per (layer, kv, token), though the two pools order bytes differently
        pa, pb = rb.pages, wa.pages
        assert pa is not None and pb is not None
        assert torch.equal(pa.page(int(ib[i * PAGE])).view(torch.int16), pb.page(int(ia[i * PAGE])).view(torch.int16))


def test_batch_exists_and_get_stop_at_the_first_missing_page(daemon: Any, backend_factory: BackendFactory) -> None:
    pool = make_pool("mha", "layer_first")
    b = backend_factory(daemon.socket, pool)
    fill_random(pool, 4)
    keys = page_keys(8, salt=2)
    idx = pool.alloc(8 * PAGE)
    stored = [0, 1, 2, 3, 5, 6]  # page 4 missing
    assert b.batch_set_v1([keys[i] for i in stored], torch.cat([idx[i * PAGE:(i + 1) * PAGE] for i in stored])) == [True] * 6
    assert b.batch_exists(keys) == 4
    assert b.batch_exists(keys[5:]) == 2
    assert b.batch_exists(keys[4:]) == 0
    assert b.exists(keys[6]) and not b.exists(keys[7])
    out = pool.alloc(8 * PAGE)
    assert b.batch_get_v1(keys, out) == [True] * 4 + [False] * 4


def test_plain_interface_round_trip(daemon: Any, backend_factory: BackendFactory, pool: Any, kind: str) -> None:
    """SGLang's non-v1 path: flat data pages from get_data_page, read into get_dummy_flat_data_page."""
    b = backend_factory(daemon.socket, pool, mla=kind == "mla")
    fill_random(pool, 5)
    idx = pool.alloc(3 * PAGE)
    keys = page_keys(3, salt=3)
    values = [pool.get_data_page(int(idx[i * PAGE]), flat=True) for i in range(3)]
    assert b.batch_set(keys[:2], values[:2]) is True
    assert b.set(keys[2], values[2]) is True
    got = b.batch_get(keys + page_keys(1, salt=99), [pool.get_dummy_flat_data_page() for _ in range(4)])
    assert got[3] is None
    for g, v in zip(got[:3], values):
        assert g is not None and torch.equal(g.view(torch.int16), v.view(torch.int16))
    single = b.get(keys[1])
    assert single is not None and torch.equal(single.view(torch.int16), values[1].view(torch.int16))
    assert b.get(page_keys(1, salt=98)[0]) is None


def test_pages_are_namespaced_by_model_tp_shard_and_namespace(daemon: Any, backend_factory: BackendFactory) -> None:
    pool = make_pool("mha", "page_first")
    fill_random(pool, 6)
    writer = backend_factory(daemon.socket, pool, tp_rank=0, tp_size=2)
    keys = page_keys(2, salt=4)
    assert writer.batch_set_v1(keys, pool.alloc(2 * PAGE)) == [True, True]
    same = backend_factory(daemon.socket, make_pool("mha", "layer_first"), tp_rank=0, tp_size=2)
    assert same.batch_exists(keys) == 2
    for other in (dict(tp_rank=1, tp_size=2), dict(tp_rank=0, tp_size=1), dict(model="other/model", tp_size=2),
                  dict(extra={"namespace": "tenant-b"}, tp_size=2), dict(pp_rank=1, pp_size=2, tp_size=2)):
        assert backend_factory(daemon.socket, make_pool("mha", "page_first"), **other).batch_exists(keys) == 0, other


def test_mla_pages_are_shared_by_all_tp_ranks(daemon: Any, backend_factory: BackendFactory) -> None:
    """MLA's latent KV is the same on every TP rank (SGLang writes it from one rank)."""
    pool = make_pool("mla", "page_first")
    fill_random(pool, 7)
    keys = page_keys(2, salt=5)
    assert backend_factory(daemon.socket, pool, mla=True, tp_rank=0, tp_size=4).batch_set_v1(keys, pool.alloc(2 * PAGE)) == [True] * 2
    assert backend_factory(daemon.socket, make_pool("mla", "page_first"), mla=True, tp_rank=3, tp_size=4).batch_exists(keys) == 2


def test_a_page_evicted_after_exists_is_a_miss_not_stale_kv(daemon: Any, backend_factory: BackendFactory) -> None:
    pool = make_pool("mha", "page_first_direct")
    b = backend_factory(daemon.socket, pool)
    fill_random(pool, 8)
    keys = page_keys(3, salt=6)
    src = pool.alloc(3 * PAGE)
    assert b.batch_set_v1(keys, src) == [True] * 3
    assert b.batch_exists(keys) == 3
    with Client.connect(daemon.socket, map_arena=False) as c:
        assert b.keys is not None
        c.evict(keys=[b.keys(keys)[1]])
    dst = pool.alloc(3 * PAGE)
    before = pages_of(pool, dst)
    assert b.batch_get_v1(keys, dst) == [True, False, False]
    assert pages_of(pool, dst)[1:] == before[1:]  # nothing was written for the missing pages


def test_clear_evicts_this_namespace_only(daemon: Any, backend_factory: BackendFactory) -> None:
    pool = make_pool("mha", "layer_first")
    fill_random(pool, 9)
    mine = backend_factory(daemon.socket, pool, extra={"namespace": "mine"})
    theirs = backend_factory(daemon.socket, pool, extra={"namespace": "theirs"})
    keys = page_keys(2, salt=7)
    idx = pool.alloc(2 * PAGE)
    assert mine.batch_set_v1(keys, idx) == [True] * 2 and theirs.batch_set_v1(keys, idx) == [True] * 2
    assert mine.clear() is True
    assert mine.batch_exists(keys) == 0
    assert theirs.batch_exists(keys) == 2


def test_sglangs_storage_threads_can_share_one_backend(daemon: Any, backend_factory: BackendFactory) -> None:
    """SGLang's prefetch, backup and query threads call one backend at once."""
    import threading

    pool = make_pool("mha", "page_first", ratio=8.0)
    fill_random(pool, 10)
    b = backend_factory(daemon.socket, pool)
    jobs = []
    for t in range(4):
        keys = page_keys(4, salt=100 + t)
        src, dst = pool.alloc(4 * PAGE), pool.alloc(4 * PAGE)
        jobs.append((keys, src, dst, pages_of(pool, src)))
    errors: list[BaseException] = []
    results: dict[int, tuple[list[bool], list[bool], int]] = {}

    def work(t: int) -> None:
        keys, src, dst, _ = jobs[t]
        try:
            stored = b.batch_set_v1(keys, src)
            found = b.batch_exists(keys)
            read = b.batch_get_v1(keys, dst)
            results[t] = (stored, read, found)
        except BaseException as exc:  # reported below, with the thread's result
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and all(not th.is_alive() for th in threads)
    for t, (keys, src, dst, want) in enumerate(jobs):
        assert results[t] == ([True] * 4, [True] * 4, 4)
        assert pages_of(pool, dst) == want


def test_fp8_pages_stored_as_bytes_round_trip(daemon: Any, backend_factory: BackendFactory, kind: str) -> None:
    """An fp8 KV cache (SGLang keeps it in uint8 buffers), with its format named in the config."""
    pool = make_pool(kind, "page_first", dtype=torch.uint8)
    fill_random(pool, 11)
    b = backend_factory(daemon.socket, pool, extra={"kv_cache_dtype": "fp8_e4m3"}, mla=kind == "mla")
    src, dst = pool.alloc(3 * PAGE), pool.alloc(3 * PAGE)
    want = pages_of(pool, src)
    keys = page_keys(3, salt=8)
    assert b.batch_set_v1(keys, src) == [True] * 3
    assert b.batch_get_v1(keys, dst) == [True] * 3
    assert pages_of(pool, dst) == want
