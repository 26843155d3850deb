"""The backend's settings: SGLang's `HiCacheStorageConfig` plus our keys in its `extra_config`.

Everything is checked when SGLang constructs the backend, so a bad setting stops the attach
(the server's start, or `/attach_hicache_storage_backend`) with a `ConfigError` naming the key,
instead of a backend that silently stores nothing or keys KV ambiguously. Shard settings that
tierd cannot key unambiguously yet (attention context parallel, decode context parallel) are
refused the same way.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tierd.errors import ConfigError
from tierd.keys import namespace_problem

#: Our keys in `--hicache-storage-backend-extra-config`.
KEYS = ("socket", "namespace", "model_id", "require_daemon", "kv_cache_dtype")
#: Keys SGLang itself reads from the same JSON (the dynamic loader's, `interface_v1`, and the
#: prefetch knobs SGLang normally pops before the backend sees them): accepted and ignored.
SGLANG_KEYS = (
    "backend_name", "module_path", "class_name", "interface_v1", "prefetch_threshold", "prefetch_timeout_base",
    "prefetch_timeout_per_ki_token", "hicache_storage_pass_prefix_keys", "tp_lcm_size",
)
PREFIX = "hicache_storage_backend_extra_config"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What the backend needs from SGLang's storage config, validated.

    `tp_rank`/`tp_size` are the shard the keys name: for MLA models the latent KV is the same
    on every TP rank, so all ranks share one copy (rank 0 of 1), as SGLang's own file backend
    does. `shard_tag` names the pipeline stage, which owns a different slice of the layers."""

    socket: str
    namespace: str
    model: str
    tp_rank: int
    tp_size: int
    is_mla: bool
    shard_tag: str
    require_daemon: bool = False
    kv_cache_dtype: str | None = None  # SGLang's --kv-cache-dtype, when its pool stores raw bytes

    @classmethod
    def from_storage_config(cls, storage_config: Any) -> "BackendConfig":
        extra = _extra(storage_config)
        unknown = sorted(set(extra) - set(KEYS) - set(SGLANG_KEYS))
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, KEYS, 1)) else repr(k)
                     for k in unknown]
            raise ConfigError(f"{PREFIX}: unknown key(s) {', '.join(hints)}; tierd's keys are {', '.join(KEYS)}")
        socket = _socket(extra)
        namespace = extra.get("namespace", "default")
        if (problem := namespace_problem(namespace)) is not None:
            raise ConfigError(f"{PREFIX}.namespace: {problem}")
        model = extra.get("model_id", getattr(storage_config, "model_name", None))
        if not isinstance(model, str) or not model:
            raise ConfigError(
                f"{PREFIX}.model_id {model!r}: SGLang passed no model name; set \"model_id\" to the model's name "
                "(pages are keyed by model, so two models never share KV)"
            )
        require = extra.get("require_daemon", False)
        if not isinstance(require, bool):
            raise ConfigError(f"{PREFIX}.require_daemon {require!r}: use true or false")
        kv_dtype = extra.get("kv_cache_dtype")
        if kv_dtype is not None and (not isinstance(kv_dtype, str) or not kv_dtype or "\x00" in kv_dtype):
            raise ConfigError(f"{PREFIX}.kv_cache_dtype {kv_dtype!r}: give SGLang's --kv-cache-dtype, e.g. \"fp8_e4m3\"")
        for name in ("attn_cp_size", "dcp_size"):
            size = getattr(storage_config, name, 1) or 1
            if size != 1:
                raise ConfigError(
                    f"HiCacheStorageConfig.{name}={size}: the tierd backend does not key context-parallel shards yet; "
                    "use --hicache-storage-backend file for this deployment, or run without context parallelism"
                )
        tp_rank, tp_size = _int(storage_config, "tp_rank"), _int(storage_config, "tp_size")
        if tp_size < 1 or not 0 <= tp_rank < tp_size:
            raise ConfigError(f"HiCacheStorageConfig tp_rank={tp_rank}, tp_size={tp_size}: rank must be in [0, size)")
        pp_rank, pp_size = _int(storage_config, "pp_rank"), _int(storage_config, "pp_size")
        if pp_size < 1 or not 0 <= pp_rank < pp_size:
            raise ConfigError(f"HiCacheStorageConfig pp_rank={pp_rank}, pp_size={pp_size}: rank must be in [0, size)")
        is_mla = bool(getattr(storage_config, "is_mla_model", False))
        if is_mla:
            tp_rank, tp_size = 0, 1
        return cls(socket, namespace, model, tp_rank, tp_size, is_mla, f"pp{pp_rank}of{pp_size}", require, kv_dtype)


def _extra(storage_config: Any) -> dict[str, Any]:
    extra = getattr(storage_config, "extra_config", None)
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"{PREFIX} {extra!r}: must be a JSON object")
    return dict(extra)


def _int(storage_config: Any, name: str) -> int:
    value = getattr(storage_config, name, None)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"HiCacheStorageConfig.{name} {value!r}: expected an integer from SGLang")
    return value


def _socket(extra: Mapping[str, Any]) -> str:
    socket = extra["socket"] if "socket" in extra else os.environ.get("TIERD_SOCKET")
    if socket is None:
        from tierd.config import default_socket_path

        socket = default_socket_path()
    if not isinstance(socket, str) or not socket.strip():
        raise ConfigError(f"{PREFIX}.socket {socket!r}: give the daemon's socket path, e.g. /tmp/tierd.sock")
    if len(os.fsencode(socket)) > 107:
        raise ConfigError(f"{PREFIX}.socket {socket!r}: longer than a Unix socket path can be (107 bytes)")
    if not Path(socket).parent.is_dir():
        raise ConfigError(f"{PREFIX}.socket {socket!r}: directory {str(Path(socket).parent)!r} does not exist")
    return socket
