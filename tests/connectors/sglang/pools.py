"""SGLang's real host KV pools and storage config, built on CPU the way SGLang builds them.

SGLang's scheduler makes a device KV pool on the GPU, describes its per-layer buffers with an
`MHABufferInfo` / `MLABufferInfo` and hands that to `MHATokenToKVPoolHost` /
`MLATokenToKVPoolHost`. Here the "device" buffers are small CPU tensors with the same shapes
([tokens, heads, head_dim] per layer for MHA, [tokens, 1, kv_cache_dim] for MLA); the host
pools, their layouts, allocators and page accessors are SGLang's own code, unchanged.

SGLang itself is imported with `connectors.sglang.cpu_import.import_sglang`, which puts inert
stand-ins in place of `torchvision` (no CPU build here) and of `triton` where it is missing,
*only while SGLang's modules import* (see that module's docstring); everything used below is
real SGLang code.
"""
from __future__ import annotations

from typing import Any

import torch

from connectors.sglang.cpu_import import import_sglang

STOOD_IN = import_sglang()

from sglang.srt.mem_cache.device_pool_info import (  # noqa: E402
    KVBufferLayout,
    KVBuffers,
    MHABufferInfo,
    MLABufferInfo,
)
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402

LAYOUTS = ("layer_first", "page_first", "page_first_direct")
MODEL = "test-org/test-model"

# Small but not degenerate: every axis differs, so a transposition bug cannot hide.
LAYERS, HEADS, HEAD_DIM, PAGE = 3, 2, 8, 4
KV_LORA_RANK, ROPE_DIM = 12, 4
DEVICE_TOKENS = 64


def _ptrs(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.uint64)


def mha_pool(layout: str, *, dtype: torch.dtype = torch.bfloat16, ratio: float = 2.0, layers: int = LAYERS,
             heads: int = HEADS, head_dim: int = HEAD_DIM, page: int = PAGE,
             device_tokens: int = DEVICE_TOKENS) -> MHATokenToKVPoolHost:
    k = [torch.zeros(device_tokens, heads, head_dim, dtype=dtype) for _ in range(layers)]
    v = [torch.zeros(device_tokens, heads, head_dim, dtype=dtype) for _ in range(layers)]
    info = MHABufferInfo(
        buffers=KVBuffers(k=tuple(k), v=tuple(v), k_data_ptrs=_ptrs(k), v_data_ptrs=_ptrs(v), layout=KVBufferLayout.NHD),
        page_size=page, head_num=heads, head_dim=head_dim, v_head_dim=head_dim, dtype=dtype,
        device=torch.device("cpu"),
    )
    return MHATokenToKVPoolHost(info, ratio, 0, page, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=device_tokens, start_layer=0, end_layer=layers)


def mla_pool(layout: str, *, dtype: torch.dtype = torch.bfloat16, ratio: float = 2.0, layers: int = LAYERS,
             page: int = PAGE, device_tokens: int = DEVICE_TOKENS) -> MLATokenToKVPoolHost:
    dim = KV_LORA_RANK + ROPE_DIM
    rows = [torch.zeros(device_tokens, 1, dim, dtype=dtype) for _ in range(layers)]
    info = MLABufferInfo(
        buffers=tuple(rows), data_ptrs=_ptrs(rows), layer_indices=tuple(range(layers)), device_layer_num=layers,
        page_size=page, kv_lora_rank=KV_LORA_RANK, qk_rope_head_dim=ROPE_DIM, kv_cache_dim=dim, dtype=dtype,
        device=torch.device("cpu"),
    )
    return MLATokenToKVPoolHost(info, ratio, 0, page, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=device_tokens, start_layer=0, end_layer=layers,
                                target_layer_num=layers)


def make_pool(kind: str, layout: str, **kw: Any) -> Any:
    return mha_pool(layout, **kw) if kind == "mha" else mla_pool(layout, **kw)


def storage_config(extra: dict[str, Any] | None = None, *, mla: bool = False, tp_rank: int = 0, tp_size: int = 1,
                   pp_rank: int = 0, pp_size: int = 1, model: str | None = MODEL, **kw: Any) -> HiCacheStorageConfig:
    """SGLang's own config object, as its cache controller fills it in."""
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank, pp_size=pp_size, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=mla, enable_storage_metrics=False, is_page_first_layout=False, model_name=model,
        extra_config=extra, **kw,
    )


def fill_random(pool: Any, seed: int) -> None:
    """Every byte of the pool's buffer random (as raw bytes, so any dtype works)."""
    g = torch.Generator().manual_seed(seed)
    raw = pool.kv_buffer.view(torch.uint8)
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=g))
