"""The CUDA kernels: they compile with nvcc wherever nvcc exists (GPU or not), and wherever torch
sees a CUDA device they must match the pure-torch reference bit for bit, for chunks in device
memory and in pinned host memory, and through the pipelined layer-wise / staged paths, from
both compilers of the one source: nvcc's library and NVRTC's module (through CuPy).

On a machine without CUDA the runtime tests are skipped with the reason; none of them has run
on the development machine (no GPU there)."""
from __future__ import annotations

import ctypes.util

import numpy as np
import pytest
import torch

from native import block_runs, concat, copier
from native import cuda as native_cuda
from native import kernels as native_kernels
from native.backend import TorchCopier
from native.build import compile_cuda_library, compile_cuda_object, find_cuda_library, find_nvrtc_module, nvcc
from tests.native.layouts import DTYPES, KINDS, build, random_bytes


def _no_cuda_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: no CUDA device to run the kernels on"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    kernels, why = native_kernels.load()
    if kernels is None:
        return f"CUDA kernels could not be built here: {why}"
    return None


pytestmark = pytest.mark.gpu  # the CUDA kernels and toolchain: nothing here runs on a CPU-only machine

NO_CUDA = _no_cuda_reason()
needs_cuda = pytest.mark.skipif(NO_CUDA is not None, reason=str(NO_CUDA))


@pytest.mark.skipif(nvcc() is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): cannot compile the CUDA sources")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    out = tmp_path / "gather_scatter.o"
    why = compile_cuda_object(out)
    assert why is None, why
    assert out.stat().st_size > 0


@pytest.mark.skipif(nvcc() is None, reason="nvcc not found: cannot build the CUDA library")
@pytest.mark.skipif(torch.cuda.is_available() or ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver is present: a launch would run (the real kernels are tested instead)")
def test_cuda_library_links_loads_and_reports_a_launch_without_a_driver(tmp_path):
    """Without a CUDA driver the library still loads (its calling convention is checked) and a
    launch returns the CUDA error to Python instead of crashing."""
    out = tmp_path / "libtierd_gs_cuda.so"
    why = compile_cuda_library(out)
    assert why is None, why
    kernels = native_kernels.CudaKernels(out)
    runs = np.array([[0, 0, 0, 0, 1]], dtype=np.int64)
    with pytest.raises(RuntimeError, match="cudaError"):
        kernels.launch(0, 0, 0, range(0, 1), 1, 8, 2, 2, 0, 8, runs.ctypes.data, 1, False, 0)


def _compiled(compiler: str) -> "native_kernels.CudaKernels | native_kernels.NvrtcKernels":
    """The kernels from one compiler (whichever `load()` would pick, both are checked), or a skip."""
    if NO_CUDA is not None:
        pytest.skip(NO_CUDA)
    found = find_cuda_library() if compiler == "nvcc" else find_nvrtc_module()
    if found.path is None:
        pytest.skip(f"no {compiler} build here: {found.how}")
    return native_kernels.CudaKernels(found.path) if compiler == "nvcc" else native_kernels.NvrtcKernels(found.path)


def _runs(nb: int, bs: int, tokens: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = [int(b) for b in rng.permutation(nb)]
    first = block_runs(blocks[:3], bs, chunk=0, first_token=1, num_tokens=tokens - 1, block_offset=bs - 1)
    second = block_runs(blocks[3:6], bs, chunk=1, num_tokens=tokens)
    return concat(first, second)


@needs_cuda
@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("where", ["device", "pinned"])
def test_cuda_matches_reference(compiler, kind, dtype, where):
    L, H, D, bs, nb = 3, 2, 64, 16, 10
    tokens = 2 * bs + 1
    make = lambda: build(kind, L, H, D, bs, nb, dtype, torch.Generator().manual_seed(11), device="cuda")  # noqa: E731
    built = make()
    runs = _runs(nb, bs, tokens, 3)
    per_chunk = L * built.cache.kv_factor * tokens * H * D * built.cache.itemsize

    def chunk(fill: int) -> torch.Tensor:
        t = torch.full((per_chunk,), fill, dtype=torch.uint8)
        return t.cuda() if where == "device" else t.pin_memory()

    kernels = _compiled(compiler)
    assert copier(built.cache, "cuda").backend == "cuda"
    k = native_cuda.CudaCopier(built.cache, kernels)
    for fill in (0x55, 0x2A):  # two sentinels: every covered element written, nothing else
        want = [torch.full((per_chunk,), fill, dtype=torch.uint8, device="cuda") for _ in range(2)]
        got = [chunk(fill) for _ in range(2)]
        TorchCopier(built.cache).gather(runs, want)
        k.gather(runs, got)
        torch.cuda.synchronize()
        for w, g in zip(want, got):
            assert torch.equal(w.cpu(), g.cpu())

    a, b = make(), make()
    chunks = [random_bytes(per_chunk, torch.Generator().manual_seed(i)) for i in range(2)]
    chunks = [c.cuda() for c in chunks] if where == "device" else [c.pin_memory() for c in chunks]
    TorchCopier(a.cache).scatter([c.cuda() for c in chunks], runs)
    native_cuda.CudaCopier(b.cache, kernels).scatter(chunks, runs, layers=range(0, L))
    torch.cuda.synchronize()
    for sa, sb in zip(a.storages, b.storages):
        assert torch.equal(sa, sb)


@needs_cuda
@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_kernels_run_on_the_callers_stream(compiler):
    """A copy queued on a side stream is ordered after that stream's earlier work and before
    its later work (the NVRTC path hands the caller's cudaStream_t to CuPy as an external
    stream; a launch on another stream would race the fill below)."""
    kernels = _compiled(compiler)
    L, H, D, bs, nb, T = 2, 4, 128, 16, 8, 32
    built = build("gpu_LBNHC", L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(4), device="cuda")
    runs = block_runs([5, 2], bs)
    per_chunk = L * 2 * T * H * D * 2
    want = torch.zeros(per_chunk, dtype=torch.uint8, device="cuda")
    TorchCopier(built.cache).gather(runs, [want])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # the cache and `want` were written on the default stream
    got = torch.empty(per_chunk, dtype=torch.uint8, device="cuda")
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keeps the side stream busy: a launch elsewhere would run first
        got.fill_(0x11)
        native_cuda.CudaCopier(built.cache, kernels).gather(runs, [got])  # on the current stream: side
    side.synchronize()
    assert torch.equal(got, want)


@needs_cuda
def test_nvrtc_launch_errors_name_the_cuda_error():
    kernels = _compiled("nvrtc")
    with pytest.raises(RuntimeError, match="cudaError"):
        kernels.launch(0, 0, 0, range(0, 1), 1, 8, 3, 2, 0, 8, 0, 1, False, 0)  # kv_factor 3
