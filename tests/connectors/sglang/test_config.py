"""Bad settings stop SGLang's attach at start with a message naming the key (through SGLang's
own dynamic factory, as `--hicache-storage-backend dynamic` runs it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

from connectors.sglang.backend import TierdHiCacheStorage
from tests.connectors.sglang.pools import make_pool, mha_pool, storage_config
from tierd.errors import ConfigError, DaemonUnavailableError, LayoutMismatchError

REG = {"backend_name": "tierd", "module_path": "connectors.sglang.backend", "class_name": "TierdHiCacheStorage"}


def _create(extra: dict[str, Any], **config: Any) -> TierdHiCacheStorage:
    backend = StorageBackendFactory.create_backend("dynamic", storage_config({**REG, **extra}, **config), None)
    assert isinstance(backend, TierdHiCacheStorage)
    return backend


@pytest.mark.parametrize("extra, config, message", [
    ({"sokcet": "/tmp/x.sock"}, {}, r"unknown key\(s\) 'sokcet' \(did you mean 'socket'\?\)"),
    ({"socket": "/no/such/dir/tierd.sock"}, {}, r"socket .*directory '/no/such/dir' does not exist"),
    ({"socket": "/tmp/" + "x" * 120}, {}, r"longer than a Unix socket path"),
    ({"socket": ""}, {}, r"give the daemon's socket path"),
    ({"namespace": ""}, {}, r"namespace '': use a non-empty string"),
    ({"require_daemon": "yes"}, {}, r"require_daemon 'yes': use true or false"),
    ({"kv_cache_dtype": 8}, {}, r"kv_cache_dtype 8: give SGLang's --kv-cache-dtype"),
    ({}, {"model": None}, r"model_id None: SGLang passed no model name; set \"model_id\""),
    ({}, {"tp_rank": 2, "tp_size": 2}, r"tp_rank=2, tp_size=2"),
    ({}, {"attn_cp_rank": 0, "attn_cp_size": 2}, r"attn_cp_size=2: the tierd backend does not key context-parallel"),
])
def test_bad_config_is_a_clear_error_at_start(extra: dict[str, Any], config: dict[str, Any], message: str,
                                              short_dir: Path) -> None:
    extra = {"socket": str(short_dir / "t.sock"), **extra}
    if "attn_cp_size" in config:  # not a storage_config() keyword: set on SGLang's config object
        cp = config.pop("attn_cp_size"), config.pop("attn_cp_rank")
        cfg = storage_config({**REG, **extra}, **config)
        cfg.attn_cp_size, cfg.attn_cp_rank = cp
        with pytest.raises(ConfigError, match=message):
            StorageBackendFactory.create_backend("dynamic", cfg, None)
        return
    with pytest.raises(ConfigError, match=message):
        _create(extra, **config)


def test_model_id_overrides_sglangs_model_name(short_dir: Path) -> None:
    b = _create({"socket": str(short_dir / "t.sock"), "model_id": "my-model"}, model="/models/path/my-model")
    try:
        assert b.config.model == "my-model"
    finally:
        b.close()


def test_require_daemon_fails_the_attach_when_none_answers(short_dir: Path) -> None:
    with pytest.raises(DaemonUnavailableError, match=r"no tierd daemon answers at .*t\.sock.*tierd serve --socket"):
        _create({"socket": str(short_dir / "t.sock"), "require_daemon": True})


@pytest.mark.parametrize("layout", ["page_head"])
def test_a_host_pool_layout_tierd_does_not_decode_is_refused_at_registration(layout: str, short_dir: Path) -> None:
    b = _create({"socket": str(short_dir / "t.sock")})
    try:
        with pytest.raises(LayoutMismatchError, match=r"layout 'page_head': tierd supports layer_first, page_first, "
                                                      r"page_first_direct"):
            b.register_mem_pool_host(mha_pool(layout))
        assert b.pages is None
    finally:
        b.close()


def test_a_dtype_tierd_does_not_store_is_refused(short_dir: Path) -> None:
    import torch

    b = _create({"socket": str(short_dir / "t.sock")})
    try:
        with pytest.raises(LayoutMismatchError, match="dtype torch.float64"):
            b.register_mem_pool_host(make_pool("mha", "layer_first", dtype=torch.float64))
    finally:
        b.close()


def test_an_fp8_pool_needs_its_format_in_the_keys(short_dir: Path) -> None:
    """SGLang keeps fp8 KV in uint8 buffers: without kv_cache_dtype, e4m3 and e5m2 pages would share keys."""
    import torch

    socket = str(short_dir / "t.sock")
    b = _create({"socket": socket})
    try:
        with pytest.raises(LayoutMismatchError, match=r"raw uint8 bytes .*set \"kv_cache_dtype\""):
            b.register_mem_pool_host(make_pool("mha", "layer_first", dtype=torch.uint8))
    finally:
        b.close()
    e4m3, e5m2 = (_create({"socket": socket, "kv_cache_dtype": d}) for d in ("fp8_e4m3", "fp8_e5m2"))
    try:
        for b in (e4m3, e5m2):
            b.register_mem_pool_host(make_pool("mha", "layer_first", dtype=torch.uint8))
        assert e4m3.keys is not None and e5m2.keys is not None
        assert e4m3.keys(["abc"]) != e5m2.keys(["abc"])
    finally:
        e4m3.close()
        e5m2.close()
