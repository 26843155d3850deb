"""The SGLang backend's layout names the model as the server loaded it (issue 20, item 2): from
SGLang's server arguments, the content of the model's files, its revision, quantisation and
dtypes. Before, HostPages keyed pages by the model name only: the fingerprint checks failed."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.connectors.sglang.pools import make_pool  # imports SGLang first

from connectors.sglang import pages as pages_module  # noqa: E402
from connectors.sglang.pages import HostPages, fingerprint_from_server_args  # noqa: E402
from tests.connectors.test_model_fingerprint import model_dir  # noqa: E402
from tierd.errors import LayoutMismatchError  # noqa: E402


def server_args(model: Path | str, **over: Any) -> SimpleNamespace:
    """The ServerArgs fields the fingerprint reads, with SGLang's defaults."""
    return SimpleNamespace(**{"model_path": str(model), "revision": None, "dtype": "auto", "quantization": None,
                              "kv_cache_dtype": "auto", "load_format": "auto", "random_seed": 42,
                              "json_model_override_args": "{}", "download_dir": None, **over})


def test_fingerprint_follows_weights_and_settings(tmp_path):
    d = model_dir(tmp_path / "m")
    fp = fingerprint_from_server_args(server_args(d))
    assert fp == fingerprint_from_server_args(server_args(d))  # every TP rank alone
    for change in ({"kv_cache_dtype": "fp8_e4m3"}, {"quantization": "fp8"}, {"dtype": "bfloat16"},
                   {"json_model_override_args": '{"rope_theta": 1}'}):
        assert fingerprint_from_server_args(server_args(d, **change)) != fp, change
    st = (d / "model.safetensors").stat()
    model_dir(d, seed=5)
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint_from_server_args(server_args(d)) != fp
    with pytest.raises(LayoutMismatchError, match="cannot read the files"):
        fingerprint_from_server_args(server_args("org/absent", download_dir=str(tmp_path)))


def test_host_pages_layout_carries_the_servers_fingerprint(tmp_path, monkeypatch):
    import sglang.srt.runtime_context as runtime_context

    pool = make_pool("mha", "layer_first")
    plain = HostPages(pool, model="m", tp_rank=0, tp_size=1)  # no server arguments here: none
    assert plain.layout.fingerprint == ""
    monkeypatch.setattr(runtime_context, "get_server_args", lambda: server_args(model_dir(tmp_path / "m")))
    served = HostPages(pool, model="m", tp_rank=0, tp_size=1)
    assert served.layout.fingerprint == fingerprint_from_server_args(server_args(tmp_path / "m"))
    assert served.layout.layout_id != plain.layout.layout_id
    assert HostPages(pool, model="m", tp_rank=0, tp_size=1, fingerprint="ab" * 16).layout.fingerprint == "ab" * 16
    assert pages_module.server_fingerprint() == served.layout.fingerprint
