"""The Triton kernel (native/triton_copy.py) against the pure-torch reference, bit for bit.

No GPU here: Triton's interpreter runs the very kernel source on CPU tensors (host addresses
stand in for device ones), which checks its addressing in every layout, for chunks starting and
ending mid-block, partial layer ranges and every element width. On a machine where torch sees a
CUDA device, the compiled kernel is checked the same way on device caches. Gathers use the
sentinel checks of test_cpu.py: every covered element written, nothing else touched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from native import triton_copy
from native.backend import TorchCopier
from tests.native.layouts import DTYPES, KINDS, build, random_bytes, random_runs
from tests.native.test_cpu import _check_gather

pytestmark = pytest.mark.skipif(triton_copy.triton is None, reason="triton is not installed")
GPU, GPU_WHY = triton_copy.available()


def _scatter_matches(make, runs, n_chunks: int, tokens: int, layers=None, device: str = "cpu") -> None:
    a, b = make(), make()
    per_chunk = a.cache.num_layers * 2 * tokens * a.cache.chunk_row * a.cache.itemsize
    gen = torch.Generator().manual_seed(11)
    chunks = [random_bytes(per_chunk, gen, device) for _ in range(n_chunks)]
    TorchCopier(a.cache).scatter(chunks, runs, layers)
    triton_copy.TritonCopier(b.cache).scatter(chunks, runs, layers)
    if device != "cpu":
        torch.cuda.synchronize()
    for sa, sb in zip(a.storages, b.storages):
        assert torch.equal(sa, sb), "triton scatter differs from the reference"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_interpreted_kernel_matches_reference_in_every_layout(kind, dtype):
    L, H, D, bs, nb, T = 2, 2, 8, 4, 8, 11  # a chunk that is not a whole number of blocks
    seed = abs(hash((kind, str(dtype), "triton"))) % 2**31
    make = lambda: build(kind, L, H, D, bs, nb, dtype, torch.Generator().manual_seed(seed))  # noqa: E731
    built = make()
    runs = random_runs(np.random.default_rng(seed), nb, bs, 2, T)
    _check_gather(built, runs, 2, T, triton_copy.TritonCopier(built.cache))
    _check_gather(built, runs, 2, T, triton_copy.TritonCopier(built.cache), layers=range(1, 2))
    _scatter_matches(make, runs, 2, T)
    _scatter_matches(make, runs, 2, T, layers=range(0, 1))


def test_interpreted_kernel_handles_heads_larger_than_one_tile():
    """heads * tokens * head_dim above the 1024-element tile: the program loops over tiles."""
    built = build("gpu_LBNHC", 1, 4, 128, 16, 4, torch.bfloat16, torch.Generator().manual_seed(5))
    runs = random_runs(np.random.default_rng(5), 4, 16, 1, 16)
    _check_gather(built, runs, 1, 16, triton_copy.TritonCopier(built.cache))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason=GPU_WHY)
@pytest.mark.parametrize("kind", ["gpu_LBNHC", "gpu_BLHNC", "gpu_padded", "kv_first"])
def test_compiled_kernel_matches_reference_on_the_device(kind):
    L, H, D, bs, nb, T = 3, 4, 128, 16, 12, 40
    make = lambda: build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(9), device="cuda")  # noqa: E731
    built = make()
    runs = random_runs(np.random.default_rng(9), nb, bs, 2, T)
    want = [torch.zeros(built.cache.chunk_shape(T), dtype=torch.int16, device="cuda") for _ in range(2)]
    got = [torch.ones_like(w) for w in want]
    TorchCopier(built.cache).gather(runs, want)
    triton_copy.TritonCopier(built.cache).gather(runs, got)
    torch.cuda.synchronize()
    covered = np.zeros((2, T), dtype=bool)
    for c, t, _, _, k in runs:
        covered[c, t:t + k] = True
    for c in range(2):
        m = torch.from_numpy(covered[c]).cuda()
        assert torch.equal(want[c][:, :, m], got[c][:, :, m])
    _scatter_matches(make, runs, 2, T, device="cuda")
