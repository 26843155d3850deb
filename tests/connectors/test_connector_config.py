"""kv_connector_extra_config: defaults and every kind of bad value."""
from __future__ import annotations

import pytest

from connectors.vllm.config import ConnectorConfig
from tierd.errors import ConfigError


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERD_SOCKET", str(tmp_path / "env.sock"))
    cfg = ConnectorConfig.from_extra({}, block_size=16)
    assert cfg.socket == str(tmp_path / "env.sock") and cfg.chunk_size == 256 and cfg.namespace == "default"
    assert cfg.save_decode is False and cfg.load_plan is True and cfg.mla_on_cpu is False
    cfg = ConnectorConfig.from_extra({"socket": str(tmp_path / "x.sock"), "chunk_size": 512, "namespace": "team-a",
                                      "save_decode": True, "device_flops": 1e11, "mla_on_cpu": True}, block_size=128)
    assert (cfg.socket, cfg.chunk_size, cfg.namespace, cfg.save_decode, cfg.device_flops, cfg.mla_on_cpu) == (
        str(tmp_path / "x.sock"), 512, "team-a", True, 1e11, True)


@pytest.mark.parametrize("extra,text", [
    ({"chunk_sise": 256}, "did you mean 'chunk_size'"),
    ({"chunk_size": 100}, "multiple of the engine's block size 16"),
    ({"chunk_size": 0}, "positive integer"),
    ({"chunk_size": "256"}, "positive integer"),
    ({"socket": ""}, "socket"),
    ({"socket": "/nonexistent-dir/tierd.sock"}, "does not exist"),
    ({"socket": "/tmp/" + "x" * 200}, "longer than a Unix socket path"),
    ({"namespace": ""}, "namespace"),
    ({"save_decode": "yes"}, "true or false"),
    ({"mla_on_cpu": 1}, "mla_on_cpu 1: use true or false"),
    ({"device_flops": -1}, "positive FLOP/s"),
    ({"model_id": 5}, "model_id"),
])
def test_bad_values_name_the_key(extra, text):
    with pytest.raises(ConfigError, match=text):
        ConnectorConfig.from_extra({"socket": "/tmp/tierd-test.sock", **extra}, block_size=16)
