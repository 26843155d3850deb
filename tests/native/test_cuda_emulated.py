"""The CUDA kernel's body, compiled for the host and run over the same grid (no GPU needed),
against the pure-torch reference: checks the kernel's addressing, its 16-byte grouping and the
launcher's decision when to use it, in every layout. Streams, pinning and speed need a GPU
(tests/native/test_cuda.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from native.backend import TorchCopier
from native.build import compile_cuda_emulation
from native.cache import PagedCache
from native.chunks import chunk_batch
from native.kernels import CudaKernels, vectorisable
from native.runs import layer_range, validate
from tests.native.layouts import DTYPES, KINDS, build, random_bytes, random_runs


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> CudaKernels:
    out = tmp_path_factory.mktemp("cuda-emulation") / "libtierd_gs_cuda_emulated.so"
    why = compile_cuda_emulation(out)
    if why is not None:
        pytest.skip(f"cannot build the host emulation of the CUDA kernel: {why}")
    return CudaKernels(out)


def _launch(kernels: CudaKernels, direction: int, cache: PagedCache, runs: np.ndarray, chunks: list[torch.Tensor],
            layers: range | None = None) -> bool:
    """What CudaCopier does, with host pointers and no stream."""
    batch = chunk_batch(cache, chunks, writable=direction == 0)
    r = validate(runs, num_chunks=len(batch.ptrs), chunk_tokens=batch.tokens, num_blocks=cache.num_blocks,
                 block_size=cache.block_size)
    vec = vectorisable(cache, batch.ptrs)
    kernels.launch(direction, cache.ptrs.ctypes.data, cache.strides.ctypes.data, layer_range(layers, cache.num_layers),
                   cache.num_kv_heads, cache.head_dim, cache.kv_factor, cache.itemsize, batch.ptrs.ctypes.data, batch.tokens,
                   r.ctypes.data, len(r), vec, 0)
    return vec


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("head_dim", [16, 5])
def test_emulated_cuda_kernel_matches_reference(emulated, kind, dtype, head_dim):
    L, H, bs, nb, n, T = 3, 2, 8, 12, 2, 21
    seed = 1000 + KINDS.index(kind) * 10 + DTYPES.index(dtype) + head_dim
    make = lambda: build(kind, L, H, head_dim, bs, nb, dtype, torch.Generator().manual_seed(seed))  # noqa: E731
    built = make()
    runs = random_runs(np.random.default_rng(seed), nb, bs, n, T)
    per_chunk = L * built.cache.kv_factor * T * H * head_dim * built.cache.itemsize
    layers = range(1, 3) if seed % 2 else None
    for fill in (0x55, 0x2A):  # two sentinels: every covered element written, nothing else
        want = [torch.full((per_chunk,), fill, dtype=torch.uint8) for _ in range(n)]
        got = [torch.full((per_chunk,), fill, dtype=torch.uint8) for _ in range(n)]
        TorchCopier(built.cache).gather(runs, want, layers)
        _launch(emulated, 0, built.cache, runs, got, layers)
        for w, g in zip(want, got):
            assert torch.equal(w, g)
    a, b = make(), make()
    chunks = [random_bytes(per_chunk, torch.Generator().manual_seed(seed + i)) for i in range(n)]
    TorchCopier(a.cache).scatter(chunks, runs, layers)
    _launch(emulated, 1, b.cache, runs, chunks, layers)
    for sa, sb in zip(a.storages, b.storages):
        assert torch.equal(sa, sb)


@pytest.mark.parametrize("kind,dtype,head_dim,vector", [
    ("gpu_LBNHC", torch.bfloat16, 64, True),      # flash-attn's layout: 16-byte groups
    ("gpu_BLHNC", torch.float8_e4m3fn, 16, True),
    ("kv_first", torch.float32, 8, True),
    ("cpu_one_buffer", torch.bfloat16, 64, False),  # dim-major K: element by element
    ("gpu_padded", torch.bfloat16, 64, False),      # V starts 2 bytes past a 16-byte boundary
    ("gpu_LBNHC", torch.bfloat16, 5, False),        # 10-byte rows
])
def test_16_byte_groups_are_used_exactly_where_safe(emulated, kind, dtype, head_dim, vector):
    built = build(kind, 2, 2, head_dim, 4, 4, dtype, torch.Generator().manual_seed(0))
    chunk = torch.zeros(2 * 2 * 8 * 2 * head_dim * built.cache.itemsize, dtype=torch.uint8)
    want = chunk.clone()
    runs = np.array([[0, 0, 3, 0, 4], [0, 4, 1, 0, 4]])
    TorchCopier(built.cache).gather(runs, [want])
    assert _launch(emulated, 0, built.cache, runs, [chunk]) is vector
    assert torch.equal(chunk, want)
