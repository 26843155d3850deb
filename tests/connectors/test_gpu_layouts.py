"""The connector's reading of vLLM's GPU KV layouts, checked against vLLM's own code.

The per-layer views are built by vLLM itself (`create_kv_cache_views` over one int8 allocation,
with the strides `compute_layout_strides` gives each `KVCacheLayout`, kernel blocks split as the
model runner splits them), only in CPU memory: no GPU here, and the layout is a matter of
strides, not of the device. K and V are read the way vLLM's FlashAttention, Triton and FlashInfer
backends read them in their forward pass: `kv_cache.transpose(1, 2).split(head_size, -1)`.

A gather must give exactly the canonical chunk those views hold; a scatter must write exactly
the bytes those views address for the target blocks and nothing else (every other byte of the
allocation compared). The copies run through native's C++ kernels (or its torch reference where
they cannot be built), the same path as on a CPU engine; on a GPU the CUDA kernels read the same
`PagedCache` descriptor (tests/native/test_cuda.py checks them against the same reference).
"""
from __future__ import annotations

import pytest
import torch
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheTensor, compute_layout_strides, create_kv_cache_views
from vllm.v1.kv_cache_layout import KVCacheLayout

from connectors.vllm.paged import PagedKV
from tierd.errors import LayoutMismatchError
from tierd.layout import Layout

L, H, D, NB, BLOCK = 3, 2, 16, 12, 16
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn}
NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(L)]


def vllm_caches(kv_layout: KVCacheLayout, dtype: torch.dtype, page: int, seed: int = 0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """vLLM's per-layer views over one random int8 allocation (never zeros)."""
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=H, head_size=D, dtype=dtype)
    layer_stride, block_stride = compute_layout_strides(spec, NB, L, kv_layout)[:2]
    size = L * NB * spec.page_size_bytes
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(-128, 127, (size,), dtype=torch.int8, generator=gen)
    tensor = KVCacheTensor(size=size, layers=NAMES, layer_stride=layer_stride, block_stride=block_stride)
    views = create_kv_cache_views(raw, spec, NB, kv_layout, tensor, kernel_block_size=None if page == BLOCK else page)
    return raw, dict(zip(NAMES, views))


def attention_kv(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as vLLM's GPU backends read them: [pages, page_tokens, heads, head_dim]."""
    k, v = view.transpose(1, 2).split(D, dim=-1)
    return k, v


def canonical(caches: dict[str, torch.Tensor], blocks: list[int], page: int) -> torch.Tensor:
    """The canonical chunk of `blocks`, read through the attention views, as raw bytes."""
    ratio = BLOCK // page
    pages = [b * ratio + j for b in blocks for j in range(ratio)]
    rows = []
    for name in NAMES:
        k, v = attention_kv(caches[name])
        rows.append(torch.stack([k[pages].reshape(-1, H * D), v[pages].reshape(-1, H * D)]))
    return torch.stack(rows).view(torch.uint8)


def layouts_and_pages() -> list[tuple[KVCacheLayout, int]]:
    out = [(lay, BLOCK) for lay in KVCacheLayout]
    # vLLM splits a block into kernel pages only where blocks are dense pages (layer-outer layouts).
    out += [(KVCacheLayout.LBNHC, 8), (KVCacheLayout.LBHNC, 4)]
    return out


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kv_layout,page", layouts_and_pages(), ids=lambda x: getattr(x, "name", str(x)))
def test_gather_gives_what_the_attention_views_hold(kv_layout, page, dtype):
    raw, caches = vllm_caches(kv_layout, DTYPES[dtype], page)
    layout = Layout("m", dtype, L, H, D, chunk_tokens=2 * BLOCK)
    paged = PagedKV(caches, layout, BLOCK, engine="vllm-gpu")
    assert paged.ratio == BLOCK // page and paged.copy_path in ("native-cpp", "native-torch")
    blocks = [9, 2]  # out of order, not adjacent
    out = torch.empty(layout.chunk_bytes, dtype=torch.uint8)
    paged.gather(blocks, out)
    assert torch.equal(out.view(canonical(caches, blocks, page).shape), canonical(caches, blocks, page))


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("kv_layout,page", layouts_and_pages(), ids=lambda x: getattr(x, "name", str(x)))
def test_scatter_writes_exactly_the_target_blocks(kv_layout, page, dtype):
    src_raw, src = vllm_caches(kv_layout, DTYPES[dtype], page, seed=1)
    dst_raw, dst = vllm_caches(kv_layout, DTYPES[dtype], page, seed=2)
    layout = Layout("m", dtype, L, H, D, chunk_tokens=2 * BLOCK)
    chunk = torch.empty(layout.chunk_bytes, dtype=torch.uint8)
    PagedKV(src, layout, BLOCK, engine="vllm-gpu").gather([4, 7], chunk)

    _, want = vllm_caches(kv_layout, DTYPES[dtype], page, seed=2)  # same bytes as dst, written the attention's way
    expected = next(iter(want.values())).untyped_storage()  # the allocation behind `want`
    ratio = BLOCK // page
    for name in NAMES:
        ks, vs = attention_kv(src[name])
        kd, vd = attention_kv(want[name])
        for b_src, b_dst in ((4, 0), (7, 11)):  # chunk blocks 0 and 1 into blocks 0 and 11
            for j in range(ratio):
                kd[b_dst * ratio + j] = ks[b_src * ratio + j]
                vd[b_dst * ratio + j] = vs[b_src * ratio + j]
    PagedKV(dst, layout, BLOCK, engine="vllm-gpu").scatter(chunk, [0, 11])
    assert bytes(dst_raw.untyped_storage()) == bytes(expected)


def test_only_the_last_block_of_a_chunk_into_one_block():
    _, src = vllm_caches(KVCacheLayout.BLNHC, torch.bfloat16, BLOCK, seed=3)
    dst_raw, dst = vllm_caches(KVCacheLayout.BLNHC, torch.bfloat16, BLOCK, seed=4)
    layout = Layout("m", "bfloat16", L, H, D, chunk_tokens=2 * BLOCK)
    chunk = torch.empty(layout.chunk_bytes, dtype=torch.uint8)
    PagedKV(src, layout, BLOCK, engine="vllm-gpu").gather([5, 6], chunk)
    before = dst_raw.clone()
    PagedKV(dst, layout, BLOCK, engine="vllm-gpu").scatter(chunk, [3], first_token=BLOCK)
    for name in NAMES:
        for kv in (0, 1):  # compared as bits: random bytes include NaN patterns
            got, want = attention_kv(dst[name])[kv][3], attention_kv(src[name])[kv][6]
            assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    changed = (dst_raw != before).nonzero().numel()
    assert 0 < changed <= L * BLOCK * H * D * 2 * 2  # one block of each layer, K and V, 2 bytes each


def test_a_padded_head_reads_only_the_real_channels():
    """Triton pads the head (C/2 > head_dim): K is the first head_dim of the first half, V of the second."""
    pad = 24
    view = torch.randn(NB, H, BLOCK, 2 * pad)
    layout = Layout("m", "float32", 1, H, D, chunk_tokens=BLOCK)
    out = torch.empty(layout.chunk_shape)
    PagedKV({NAMES[0]: view}, layout, BLOCK, engine="vllm-gpu").gather([5], out)
    k, v = view.transpose(1, 2).split(pad, dim=-1)
    assert torch.equal(out[0, 0], k[5, :, :, :D].reshape(BLOCK, H * D))
    assert torch.equal(out[0, 1], v[5, :, :, :D].reshape(BLOCK, H * D))


@pytest.mark.parametrize("make,text", [
    (lambda: {NAMES[0]: torch.zeros(NB, BLOCK, 64)}, "view per layer"),  # 3-D: not a paged attention view
    (lambda: {NAMES[0]: torch.zeros(NB, H, 5, 2 * D)}, "do not divide"),
    (lambda: {NAMES[0]: torch.zeros(NB, H, BLOCK, D)}, "C >= 32"),
    (lambda: {NAMES[0]: torch.zeros(NB, H + 1, BLOCK, 2 * D)}, "kv_heads"),
    (lambda: {NAMES[0]: torch.zeros(NB * 2 + 1, H, BLOCK // 2, 2 * D)}, "whole number"),
    (lambda: {NAMES[0]: torch.zeros(NB, H, BLOCK, 2 * D, dtype=torch.float16)}, "float16"),
])
def test_views_that_do_not_match_the_layout_are_refused(make, text):
    layout = Layout("m", "float32", 1, H, D, chunk_tokens=BLOCK)
    with pytest.raises(LayoutMismatchError, match=text):
        PagedKV(make(), layout, BLOCK, engine="vllm-gpu")


def test_an_unknown_engine_layout_is_refused():
    with pytest.raises(LayoutMismatchError, match="engine layout 'sglang'"):
        PagedKV({NAMES[0]: torch.zeros(NB, H, BLOCK, 2 * D)}, Layout("m", "float32", 1, H, D), BLOCK, engine="sglang")
