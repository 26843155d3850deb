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
from tierd.errors import InvalidArgumentError, UnknownLayoutError
from tierd.keys import chunk_keys

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
