"""The CUDA copier's batch path on the host: a batch prepared once (checks, 16-byte grouping,
the runs and chunk addresses packed into the one descriptor block `CudaCopier` uploads), then
launched layer by layer through the CUDA kernel's entry point — here its host emulation (the
kernel's own body over the same grid), against the pure-torch reference. What stays untested
without a GPU is only the upload itself and the stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from native.backend import TorchCopier
from native.build import compile_cuda_emulation
from native.cuda import descriptors
from native.kernels import CudaKernels, vectorisable
from native.prepared import prepare
from tests.native.layouts import KINDS, build, random_bytes, random_runs


@pytest.fixture(scope="module")
def emulated(tmp_path_factory) -> CudaKernels:
    out = tmp_path_factory.mktemp("cuda-emulation") / "libtierd_gs_cuda_emulated.so"
    why = compile_cuda_emulation(out)
    assert why is None, f"cannot build the host emulation of the CUDA kernel: {why}"
    return CudaKernels(out)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gather", [True, False], ids=["gather", "scatter"])
def test_a_batch_prepared_once_and_launched_per_layer_matches_the_reference(emulated, kind, gather):
    L, H, D, bs, nb, tokens = 3, 2, 64, 16, 10, 40
    rng = np.random.default_rng(5)
    runs = random_runs(rng, nb, bs, 2, tokens)
    ours = build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(1))
    ref = build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(1))
    per_chunk = L * ours.cache.kv_factor * tokens * H * D * 2
    if gather:
        got = [torch.zeros(per_chunk, dtype=torch.uint8) for _ in range(2)]
        want = [torch.zeros(per_chunk, dtype=torch.uint8) for _ in range(2)]
        TorchCopier(ref.cache).gather(runs, want)
    else:
        got = [random_bytes(per_chunk, torch.Generator().manual_seed(i)) for i in range(2)]
        TorchCopier(ref.cache).scatter(got, runs)
    p = prepare(ours.cache, runs, got, gather=gather)
    p.vectorise = vectorisable(ours.cache, p.batch.ptrs)
    block, ptrs_at = descriptors(p)
    c = ours.cache
    for layer in range(L):  # what LayerwiseScatter issues: one launch per layer, nothing re-checked
        emulated.launch(p.direction, c.ptrs.ctypes.data, c.strides.ctypes.data, range(layer, layer + 1),
                        c.num_kv_heads, c.head_dim, c.kv_factor, c.itemsize, block.ctypes.data + ptrs_at,
                        p.batch.tokens, block.ctypes.data, len(p.runs), p.vectorise, 0)
    if gather:
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    else:
        for a, b in zip(ours.storages, ref.storages):
            assert torch.equal(a, b)
