"""The daemon's tier costs, the plan in a lookup reply, and `tierd plan` / `tierd explain` live."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.cost.shape import ModelShape
from tierd.errors import InvalidArgumentError, UnknownLayoutError
from tierd.keys import chunk_keys
from tierd.layout import Layout

# The shape behind SMALL (4 layers, 2 KV heads of 64): a tiny Llama.
SHAPE = {"num_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_kv_heads": 2, "head_dim": 64,
         "intermediate_size": 688, "vocab_size": 1000}


def test_calibrated_costs_and_plan_in_lookup(daemon_factory):
    d = daemon_factory(extra=("--calibrate",))
    keys = chunk_keys(SMALL, np.arange(256 * 8))
    with Client.connect(d.socket) as c:
        deadline = time.monotonic() + 60
        while c.stat()["calibration"] != "done":  # calibration runs once the socket is up
            assert time.monotonic() < deadline, "calibration did not finish"
            time.sleep(0.02)
        costs = c._call("costs")["tiers"]
        assert set(costs) == {"dram", "nvme"}
        assert costs["dram"]["bandwidth_bytes_per_s"] > costs["nvme"]["bandwidth_bytes_per_s"] > 0
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        plan_req = {"layout_id": SMALL.layout_id, "prompt_tokens": 256 * 8 + 10, "shape": SHAPE}
        # a device so slow that recomputing is hopeless: load everything present
        slow = c._call("lookup", keys=keys, plan={**plan_req, "device": {"flops_per_s": 1e6}})["plan"]
        assert slow["load_chunks"] == 8 and slow["recompute_from_token"] == 256 * 8
        # a device so fast that any load loses: recompute everything
        fast = c._call("lookup", keys=keys, plan={**plan_req, "device": {"flops_per_s": 1e20}})["plan"]
        assert fast["load_chunks"] == 0 and fast["recompute_from_token"] == 0
        with pytest.raises(UnknownLayoutError):
            c._call("lookup", keys=keys, plan={**plan_req, "layout_id": "0" * 16})
        with pytest.raises(InvalidArgumentError, match="unknown field"):
            c._call("lookup", keys=keys, plan={**plan_req, "colour": 1})

    r = subprocess.run([sys.executable, "-m", "tierd", "explain", "--socket", d.socket, "--json",
                        *[k.hex() for k in keys[:4]]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["prefix"] == 4 and [x["tier"] for x in report["chunks"]] == ["dram"] * 4
    assert report["plan"]["load_chunks"] == 0  # the engine's last device (very fast) is remembered

    r = subprocess.run([sys.executable, "-m", "tierd", "plan", "--socket", d.socket, "--json", "--layers", "4",
                        "--hidden", "256", "--heads", "4", "--kv-heads", "2", "--head-dim", "64", "--intermediate",
                        "688", "--vocab", "1000", "--prompt-tokens", "4096", "--device-flops", "1e11"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {t["name"] for t in out["tiers"]} == {"dram", "nvme"}


def test_admission_drops_chunks_whose_reload_never_pays(daemon_factory):
    d = daemon_factory(dram="8MiB", nvme="256MiB", extra=("--no-calibrate",))
    keys = chunk_keys(SMALL, np.arange(256 * 40))
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        # The engine says its device is so fast that no NVMe reload can ever beat recompute.
        c._call("lookup", keys=keys[:1], plan={"layout_id": SMALL.layout_id, "prompt_tokens": 300, "shape": SHAPE,
                                               "device": {"flops_per_s": 1e20}})
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        st = c.stat()
        assert st["admission_rejected"] > 0
        assert next(t for t in st["tiers"] if t["name"] == "nvme")["chunks"] == 0
        # Now a slow device: reloads pay, and chunks are written down again.
        c._call("lookup", keys=keys[:1], plan={"layout_id": SMALL.layout_id, "prompt_tokens": 300, "shape": SHAPE,
                                               "device": {"flops_per_s": 1e6}})
        more = chunk_keys(SMALL, np.arange(256 * 40) + 7)
        c.put_chunks(SMALL, more, [payload_for(k, SMALL.chunk_bytes) for k in more])
        assert next(t for t in c.stat()["tiers"] if t["name"] == "nvme")["chunks"] > 0


def test_observe_prefill_learns_the_device(daemon):
    with Client.connect(daemon.socket) as c:
        c.register_layout(SMALL)
        assert c._call("observe_prefill", start=0, end=1000, seconds=0.5) == {"observed": False}  # no shape yet
        c._call("lookup", keys=chunk_keys(SMALL, np.arange(256)), plan={"layout_id": SMALL.layout_id,
                                                                         "prompt_tokens": 300, "shape": SHAPE})
        for n in (1000, 2000, 4000):
            assert c._call("observe_prefill", start=0, end=n, seconds=n / 4000)["observed"]
        device = c._call("costs")["device"]
        assert device["observations"] == 3 and device["flops_per_s"] > 0
        for bad in ({"start": 5, "end": 5, "seconds": 1.0}, {"start": 0, "end": 10, "seconds": 0.0},
                    {"start": -1, "end": 10, "seconds": 1.0}):
            with pytest.raises(InvalidArgumentError, match="observe_prefill"):
                c._call("observe_prefill", **bad)


# A second engine serving another model: its own layout (2 layers, 4 KV heads of 64, 128-token chunks).
OTHER = Layout("other-model", "bfloat16", 2, 4, 64, chunk_tokens=128)
OTHER_SHAPE = {"num_layers": 2, "hidden_size": 512, "num_attention_heads": 8, "num_kv_heads": 4, "head_dim": 64,
               "intermediate_size": 1376, "vocab_size": 1000}


def _plan_req(layout: Layout, shape: dict, prompt_tokens: int, flops_per_s: float | None = None) -> dict:
    req = {"layout_id": layout.layout_id, "prompt_tokens": prompt_tokens, "shape": shape}
    return req if flops_per_s is None else {**req, "device": {"flops_per_s": flops_per_s}}


def _on_nvme(c: Client, namespace: str) -> int:
    return len(c.ls(tier="nvme", namespace=namespace))


def test_each_engines_chunks_are_admitted_by_its_own_model(daemon_factory):
    """Regression: the daemon kept one cost model, the one declared last, and judged every
    chunk by it. Engine A declares a device so fast that no NVMe reload pays, then engine B
    (another model, another layout) one so slow that every reload pays: A's chunks must still
    be kept off NVMe and B's written down, each by its own model."""
    d = daemon_factory(dram="8MiB", nvme="256MiB", extra=("--no-calibrate",))
    a_keys = chunk_keys(SMALL, np.arange(256 * 40))
    b_keys = chunk_keys(OTHER, np.arange(128 * 60))
    with Client.connect(d.socket) as a, Client.connect(d.socket) as b:
        a.register_layout(SMALL)
        b.register_layout(OTHER)
        a._call("lookup", keys=a_keys[:1], plan=_plan_req(SMALL, SHAPE, 300, 1e20))
        b._call("lookup", keys=b_keys[:1], plan=_plan_req(OTHER, OTHER_SHAPE, 300, 1e6))
        a.put_chunks(SMALL, a_keys, [payload_for(k, SMALL.chunk_bytes) for k in a_keys], namespace="a")
        b.put_chunks(OTHER, b_keys, [payload_for(k, OTHER.chunk_bytes) for k in b_keys], namespace="b")
        assert a.stat()["admission_rejected"] > 0
        assert _on_nvme(a, "a") == 0, "engine A's chunks were judged by engine B's model"
        assert _on_nvme(b, "b") > 0, "engine B's chunks were judged by engine A's model"


def test_each_engine_plans_with_its_own_model_and_learned_device(daemon_factory):
    """Two engines, two models, one daemon: each one's plans, `explain` and learned device
    follow its own model, whichever engine spoke last."""
    d = daemon_factory(dram="64MiB", nvme="0", extra=("--no-calibrate",))
    a_keys = chunk_keys(SMALL, np.arange(256 * 8))
    b_keys = chunk_keys(OTHER, np.arange(128 * 8))
    with Client.connect(d.socket) as a, Client.connect(d.socket) as b:
        a.put_chunks(SMALL, a_keys, [payload_for(k, SMALL.chunk_bytes) for k in a_keys])
        b.put_chunks(OTHER, b_keys, [payload_for(k, OTHER.chunk_bytes) for k in b_keys])
        a_prompt, b_prompt = 256 * 8 + 10, 128 * 8 + 10

        # declared devices: A's so fast it recomputes everything, B's so slow it loads everything
        a_plan = a._call("lookup", keys=a_keys, plan=_plan_req(SMALL, SHAPE, a_prompt, 1e20))["plan"]
        b_plan = b._call("lookup", keys=b_keys, plan=_plan_req(OTHER, OTHER_SHAPE, b_prompt, 1e6))["plan"]
        assert (a_plan["load_chunks"], b_plan["load_chunks"]) == (0, 8)
        # explain (no device in the request) answers with the model of the keys' own layout
        assert a._call("explain", keys=a_keys, prompt_tokens=a_prompt)["plan"]["load_chunks"] == 0
        assert b._call("explain", keys=b_keys, prompt_tokens=b_prompt)["plan"]["load_chunks"] == 8

        # learned devices: each engine's prefill times teach its own layout's model only
        a._call("lookup", keys=a_keys, plan=_plan_req(SMALL, SHAPE, a_prompt))
        b._call("lookup", keys=b_keys, plan=_plan_req(OTHER, OTHER_SHAPE, b_prompt))
        a_shape, b_shape = ModelShape.from_dict(SHAPE), ModelShape.from_dict(OTHER_SHAPE)
        for n in (1000, 2000, 4000):
            assert a._call("observe_prefill", start=0, end=n, seconds=a_shape.prefill_flops(n) / 1e17,
                           layout_id=SMALL.layout_id)["observed"]
            assert b._call("observe_prefill", start=0, end=n, seconds=b_shape.prefill_flops(n) / 1e6,
                           layout_id=OTHER.layout_id)["observed"]
        a_dev = a._call("costs", layout_id=SMALL.layout_id)["device"]
        b_dev = b._call("costs", layout_id=OTHER.layout_id)["device"]
        assert a_dev["observations"] == b_dev["observations"] == 3
        assert a_dev["flops_per_s"] > 1e15 and b_dev["flops_per_s"] < 1e8
        assert a._call("lookup", keys=a_keys, plan=_plan_req(SMALL, SHAPE, a_prompt))["plan"]["load_chunks"] == 0
        assert b._call("lookup", keys=b_keys, plan=_plan_req(OTHER, OTHER_SHAPE, b_prompt))["plan"]["load_chunks"] == 8
        models = a._call("costs")["models"]
        assert models[SMALL.layout_id]["shape"] == ModelShape.from_dict(SHAPE).to_dict()
        assert models[OTHER.layout_id]["shape"] == ModelShape.from_dict(OTHER_SHAPE).to_dict()

        # a layout that was never registered is an error, and teaches nothing
        with pytest.raises(UnknownLayoutError):
            a._call("observe_prefill", start=0, end=10, seconds=1.0, layout_id="0" * 16)
        with pytest.raises(UnknownLayoutError):
            a._call("costs", layout_id="0" * 16)
        assert a._call("costs", layout_id=SMALL.layout_id)["device"]["observations"] == 3
