"""The vLLM connector's layout names the model as the engine loaded it (issue 20, item 2): the
content of the files behind the model path or the Hugging Face cache snapshot, the revision, the
weight quantisation, the compute and KV cache dtypes. Before, `layout_from_vllm` used the model
path or name only, so every check here that expects a different fingerprint failed (the layout
had no fingerprint at all), and `model_fingerprint` was an unknown connector key."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from connectors.vllm.config import ConnectorConfig
from connectors.vllm.connector import fingerprint_from_vllm
from tests.test_fingerprint import write_safetensors
from tierd.errors import ConfigError
from tierd.layout import Layout


def model_dir(d: Path, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    rng = np.random.default_rng(seed)
    write_safetensors(d / "model.safetensors", {"w": rng.standard_normal(4096).astype(np.float32)})
    return d


def vllm_config(model: str | Path, *, revision: Any = None, download_dir: str | None = None, **facts: Any) -> Any:
    """The parts of vLLM's VllmConfig the fingerprint reads, with vLLM's defaults."""
    m = {"model": str(model), "revision": revision, "quantization": None, "dtype": torch.float32, "seed": 0,
         "hf_overrides": {}, "hf_config_path": None, "model_weights": ""}
    c = {"cache_dtype": "auto", "calculate_kv_scales": False}
    l = {"load_format": "auto", "download_dir": download_dir}
    for k, v in facts.items():
        next(d for d in (m, c, l) if k in d)[k] = v
    return SimpleNamespace(model_config=SimpleNamespace(**m), cache_config=SimpleNamespace(**c),
                           load_config=SimpleNamespace(**l))


def test_scheduler_and_worker_agree_and_the_weights_decide(tmp_path):
    d = model_dir(tmp_path / "m")
    fp = fingerprint_from_vllm(vllm_config(d))
    assert fp == fingerprint_from_vllm(vllm_config(d))  # the other role, computed alone
    Layout("m", "float32", 2, 2, 8, fingerprint=fp)  # a valid layout fingerprint
    st = (d / "model.safetensors").stat()
    model_dir(d, seed=1)  # other weights over the same file, same size, same mtime
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (d / "model.safetensors").stat().st_size == st.st_size
    assert fingerprint_from_vllm(vllm_config(d)) != fp


@pytest.mark.parametrize("change", [
    {"cache_dtype": "fp8"}, {"quantization": "fp8"}, {"dtype": torch.bfloat16}, {"revision": "v2"},
    {"hf_overrides": {"rope_theta": 20000.0}}, {"calculate_kv_scales": True}, {"load_format": "dummy"},
])
def test_engine_settings_that_change_kv_change_it(tmp_path, change):
    d = model_dir(tmp_path / "m")
    assert fingerprint_from_vllm(vllm_config(d, **change)) != fingerprint_from_vllm(vllm_config(d))


def test_hub_model_is_read_from_its_cache_snapshot(tmp_path):
    hub, commit = tmp_path / "hub", "89abcdef" * 5
    snap = model_dir(hub / "models--org--tiny" / "snapshots" / commit)
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text(commit)

    class Resolved(str):  # huggingface_hub's ResolvedRevision: "main", carrying the commit
        resolved = commit

    fp = fingerprint_from_vllm(vllm_config("org/tiny", revision=Resolved("main"), download_dir=str(hub)))
    assert fp == fingerprint_from_vllm(vllm_config("org/tiny", revision=None, download_dir=str(hub)))
    model_dir(snap, seed=3)
    assert fingerprint_from_vllm(vllm_config("org/tiny", revision=None, download_dir=str(hub))) != fp


def test_unreadable_model_fails_start_unless_a_fingerprint_is_declared(tmp_path):
    with pytest.raises(ValueError, match="kv_connector_extra_config.model_fingerprint"):
        fingerprint_from_vllm(vllm_config("org/not-here", download_dir=str(tmp_path)))
    declared = fingerprint_from_vllm(vllm_config("s3://bucket/model"), "release-7")
    assert declared == fingerprint_from_vllm(vllm_config("s3://bucket/model"), "release-7")
    assert declared != fingerprint_from_vllm(vllm_config("s3://bucket/model"), "release-8")


def test_model_fingerprint_key(tmp_path):
    cfg = ConnectorConfig.from_extra({"socket": str(tmp_path / "s.sock"), "model_fingerprint": "release-7"},
                                     block_size=16)
    assert cfg.model_fingerprint == "release-7"
    assert ConnectorConfig.from_extra({"socket": str(tmp_path / "s.sock")}, block_size=16).model_fingerprint is None
    for bad in ("", "  ", 7, "a\x00b", "x" * 257):
        with pytest.raises(ConfigError, match="model_fingerprint"):
            ConnectorConfig.from_extra({"socket": str(tmp_path / "s.sock"), "model_fingerprint": bad}, block_size=16)
