"""Host-pool pages ↔ tierd's canonical chunk, against SGLang's own per-layer views.

The reference for "which bytes are K (or the MLA latent) of layer l, token t" is SGLang's host
pool itself: `k_data_refs[l]` / `v_data_refs[l]` (MHA) and `data_refs[l]` (MLA) are the
per-layer token-major views its transfer kernels use (its buffer dims for MLA page_first_direct), and `get_data_page` /
`set_from_flat_data_page` are its flat-page accessors. No reference here comes from tierd."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from connectors.sglang.pages import HostPages
from tests.connectors.sglang.pools import HEADS, HEAD_DIM, KV_LORA_RANK, LAYERS, PAGE, ROPE_DIM, fill_random, mha_pool


def _layer_rows(pool: Any, kind: str, layer: int, kv: int) -> torch.Tensor:
    """SGLang's per-layer view as [tokens, heads, dim] (token-major)."""
    if kind == "mha":
        refs = pool.k_data_refs if kv == 0 else pool.v_data_refs
        t = refs[layer]
    elif pool.layout == "page_first_direct":
        # SGLang's MLA data_refs index pages, not layers, for this layout; its buffer is
        # [pages, layers, page_size, 1, dim] (MLATokenToKVPoolHost.init_kv_buffer)
        t = pool.kv_buffer.transpose(0, 1)[layer]
    else:
        t = pool.data_refs[layer]
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def test_page_views_match_sglang_layer_views(pool: Any, kind: str) -> None:
    fill_random(pool, 7)
    pages = HostPages(pool, model="m", tp_rank=0, tp_size=1)
    kv_factor = 2 if kind == "mha" else 1
    assert pages.canonical_shape == (LAYERS, kv_factor, PAGE, HEADS if kind == "mha" else 1,
                                     HEAD_DIM if kind == "mha" else KV_LORA_RANK + ROPE_DIM)
    for start in (0, PAGE, 5 * PAGE):
        view = pages.page(start)
        for layer in range(LAYERS):
            for kv in range(kv_factor):
                want = _layer_rows(pool, kind, layer, kv)[start : start + PAGE]
                assert torch.equal(view[layer, kv].view(torch.int16), want.view(torch.int16))


def test_flat_pages_are_the_same_bytes_as_pages(pool: Any) -> None:
    fill_random(pool, 8)
    pages = HostPages(pool, model="m", tp_rank=0, tp_size=1)
    flat = pool.get_data_page(2 * PAGE, flat=True)
    assert torch.equal(pages.flat(flat).view(torch.int16), pages.page(2 * PAGE).view(torch.int16))
    # and back: SGLang's own set_from_flat_data_page of a page written through flat() lands in page()
    dummy = pages.new_flat()
    pages.flat(dummy).copy_(pages.page(2 * PAGE))
    pool.set_from_flat_data_page(3 * PAGE, dummy)
    assert torch.equal(pages.page(3 * PAGE).view(torch.int16), pages.page(2 * PAGE).view(torch.int16))


def test_copy_into_a_slot_and_back_is_byte_identical(pool: Any) -> None:
    fill_random(pool, 9)
    pages = HostPages(pool, model="m", tp_rank=0, tp_size=1)
    slot = torch.empty(pages.layout.chunk_shape, dtype=torch.bfloat16)
    before = pool.get_data_page(PAGE, flat=True).clone()
    pages.chunk(slot).copy_(pages.page(PAGE))
    pages.page(4 * PAGE).copy_(pages.chunk(slot))
    assert torch.equal(pool.get_data_page(4 * PAGE, flat=True).view(torch.int16), before.view(torch.int16))


def test_layouts_agree_on_the_canonical_chunk(kind: str) -> None:
    """A page written from a layer_first pool reads into a page_first pool as the same KV."""
    from tests.connectors.sglang.pools import make_pool

    a, b = make_pool(kind, "layer_first"), make_pool(kind, "page_first_direct")
    fill_random(a, 10)
    pa, pb = (HostPages(p, model="m", tp_rank=0, tp_size=1) for p in (a, b))
    assert pa.layout == pb.layout
    slot = torch.empty(pa.layout.chunk_shape, dtype=torch.bfloat16)
    pa.chunk(slot).copy_(pa.page(PAGE))
    pb.page(0).copy_(pb.chunk(slot))
    for layer in range(LAYERS):
        for kv in range(2 if kind == "mha" else 1):
            assert torch.equal(_layer_rows(b, kind, layer, kv)[0:PAGE].view(torch.int16),
                               _layer_rows(a, kind, layer, kv)[PAGE : 2 * PAGE].view(torch.int16))


def test_misaligned_index_and_wrong_sized_page_are_refused() -> None:
    pool = mha_pool("page_first")
    pages = HostPages(pool, model="m", tp_rank=0, tp_size=1)
    with pytest.raises(IndexError, match="not the start of a page"):
        pages.page(1)
    from tierd.errors import LayoutMismatchError

    with pytest.raises(LayoutMismatchError, match="data page of"):
        pages.flat(torch.zeros(7, dtype=torch.bfloat16))
