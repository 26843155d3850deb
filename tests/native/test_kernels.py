"""One kernel source, two compilers, no GPU needed: csrc/gather_scatter.cu compiles with NVRTC
(through CuPy's `cupy.cuda.nvrtc`, as a GPU machine without nvcc does at run time) and with
nvcc; NVRTC's module exports every entry point `native.kernels` looks up; the cached builds are
keyed by the GPU architecture; `load()` prefers nvcc's library, else NVRTC's module; the Triton
backend is gone with a clear error; the report names the kernel path.

Launches against the torch reference need a device: tests/native/test_cuda.py."""
from __future__ import annotations

import ctypes.util
import re

import numpy as np
import pytest
import torch

import native.backend as backend
import native.build as build
import native.kernels as kernels
from native.build import Found, NvrtcError, compile_nvrtc
from tierd.errors import InvalidArgumentError
from tests.native.layouts import build as build_cache

SM = {"sm_80": (8, 0), "sm_90": (9, 0)}


@pytest.fixture(scope="module")
def cubins() -> dict[str, bytes]:
    """The source compiled by NVRTC for each architecture (once per module: ~1 s each)."""
    return {target: compile_nvrtc(target) for target in SM}


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """`kernels.load()` recomputed (it is cached per process) against a private build cache."""
    monkeypatch.setenv("TIERD_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TIERD_NATIVE_BACKEND", raising=False)
    load = kernels.load
    load.cache_clear()
    yield load
    load.cache_clear()


@pytest.mark.parametrize("target", sorted(SM))
def test_the_source_compiles_with_nvrtc(cubins, target):
    """A failure here is an NvrtcError carrying NVRTC's log (the module fixture shows it)."""
    assert cubins[target][:4] == b"\x7fELF"  # a cubin: machine code for exactly this arch


def test_the_ptx_exports_every_entry_point_the_loader_looks_up():
    ptx = compile_nvrtc("compute_80").decode()
    entries = dict(re.findall(r"\.visible \.entry (\w+)\(([^)]*)\)", ptx))
    assert set(entries) == set(kernels.ENTRY_POINTS.values())  # extern "C": no mangled names, none missing
    # ... each taking exactly the parameters launch() passes, width for width
    passed = [a.nbytes * 8 for a in kernels.kernel_args(0, 1, 2, 3, 4, 5, 2, 2, 6, 7, 8)]
    for name, params in entries.items():
        assert [int(w) for w in re.findall(r"\.param \.[us](\d+)", params)] == passed, name


def test_nvrtc_failures_carry_nvrtcs_log():
    """The host-only includes are what NVRTC cannot compile: unguarded, the log names the header."""
    source = build.CUDA_SOURCE.read_text()
    unguarded = source.replace("#ifndef __CUDACC_RTC__\n#include <cuda_runtime.h>", "#if 1\n#include <cuda_runtime.h>")
    assert unguarded != source
    with pytest.raises(NvrtcError, match=r"(?s)gather_scatter\.cu for sm_80.*cuda_runtime\.h"):
        compile_nvrtc("sm_80", unguarded)


@pytest.mark.gpu  # the CUDA toolchain: a CI machine has NVRTC from pip, not nvcc
@pytest.mark.skipif(build.nvcc() is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
def test_the_source_still_builds_with_nvcc_for_an_exact_arch(tmp_path):
    """The library find_cuda_library builds first (-arch=sm_80 here), exporting the host ABI."""
    flags, _ = build.cuda_library_variants((8, 0), build.nvcc_release(build.nvcc()))[0]
    assert flags[-1] == "-arch=sm_80"
    out = tmp_path / "libtierd_gs_cuda.so"
    why = build._compile([build.nvcc(), *flags, str(build.CUDA_SOURCE)], out)
    assert why is None, why
    lib = ctypes.CDLL(str(out))
    assert lib.tierd_cuda_abi() == kernels.ABI and hasattr(lib, "tierd_cuda_gather_scatter")


def test_nvcc_build_cache_names_hold_the_arch_and_the_release():
    """Defect: the `-arch=native` library was cached under a key of the source and flags only,
    so a cache shared by an sm_80 and an sm_90 machine handed one the other's library (today's
    code has one name for both: `libtierd_gs_cuda-<key of '-arch=native'>.so`)."""
    names = lambda cap, release: [p.name for _, p in build.cuda_library_variants(cap, release)]  # noqa: E731
    rel = "Cuda compilation tools, release 13.0, V13.0.88"
    assert names((8, 0), rel) == names((8, 0), rel)
    assert set(names((8, 0), rel)).isdisjoint(names((9, 0), rel))
    assert set(names((9, 0), rel)).isdisjoint(names((9, 0), "Cuda compilation tools, release 12.8, V12.8.93"))


def test_a_library_cached_for_one_gpu_is_not_used_for_another(monkeypatch, tmp_path):
    monkeypatch.setenv("TIERD_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("TIERD_NATIVE_BUILD", "0")
    monkeypatch.setattr(build, "nvcc", lambda: "/opt/cuda/bin/nvcc")
    monkeypatch.setattr(build, "nvcc_release", lambda tool: "release 13.0, V13.0.88")
    _, sm80 = build.cuda_library_variants((8, 0), "release 13.0, V13.0.88")[0]
    sm80.write_bytes(b"a library built for sm_80")
    monkeypatch.setattr(build, "device_capability", lambda: (8, 0))
    assert build.find_cuda_library() == Found(sm80, "built by nvcc on first use for sm_80 (cached)")
    monkeypatch.setattr(build, "device_capability", lambda: (9, 0))
    assert build.find_cuda_library() == Found(None, "TIERD_NATIVE_BUILD=0")


def test_nvrtc_cache_names_hold_the_arch_and_the_nvrtc_version():
    paths = {build.nvrtc_module_path(t, v) for t in ("sm_80", "sm_90", "compute_90") for v in ((12, 8), (12, 9))}
    assert len(paths) == 6
    assert build.nvrtc_module_path("sm_90", (12, 9)) == build.nvrtc_module_path("sm_90", (12, 9))
    assert build.nvrtc_module_path("compute_90", (12, 9)).suffix == ".ptx"


def test_nvrtc_targets_the_exact_arch_else_ptx_for_the_newest_below():
    known = [75, 80, 86, 89, 90, 100, 120]
    assert build.nvrtc_target((9, 0), known) == "sm_90"
    assert build.nvrtc_target((11, 0), known) == "compute_100"  # a GPU newer than this NVRTC: the driver JITs
    with pytest.raises(NvrtcError, match="sm_70"):
        build.nvrtc_target((7, 0), known)


def test_nvrtc_module_is_compiled_once_and_written_whole(monkeypatch, tmp_path, cubins):
    monkeypatch.setenv("TIERD_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "device_capability", lambda: (9, 0))
    first = build.find_nvrtc_module()
    assert first.path is not None and first.how.startswith("compiled by NVRTC") and "sm_90" in first.how
    assert first.path.read_bytes() == cubins["sm_90"]
    again = build.find_nvrtc_module()
    assert again == Found(first.path, first.how + " (cached)")
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind


def test_load_prefers_nvccs_library(monkeypatch, fresh_load, tmp_path):
    """The host emulation has the nvcc library's ABI: it stands in for a library nvcc built."""
    lib = tmp_path / "libtierd_gs_cuda_emulated.so"
    assert build.compile_cuda_emulation(lib) is None
    monkeypatch.setattr(kernels, "find_cuda_library", lambda: Found(lib, "built by nvcc on first use for sm_90"))
    monkeypatch.setattr(kernels, "find_nvrtc_module", lambda: pytest.fail("NVRTC asked although nvcc built"))
    got, how = fresh_load()
    assert isinstance(got, kernels.CudaKernels) and got.name == "nvcc" and how.startswith("nvcc library")


@pytest.mark.gpu  # the CUDA toolchain: a CI machine has NVRTC from pip, not nvcc
@pytest.mark.skipif(build.nvcc() is None, reason="nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: its library runs (the real kernels are tested)")
def test_a_library_that_cannot_run_on_this_device_is_passed_over_for_nvrtc(monkeypatch, fresh_load, tmp_path):
    """Defect: a library nvcc built that cannot launch (a driver older than the runtime nvcc
    linked in, as here: no driver at all) was chosen anyway and failed every copy."""
    flags, _ = build.cuda_library_variants((8, 0), build.nvcc_release(build.nvcc()))[0]
    out = tmp_path / "libtierd_gs_cuda.so"
    assert build._compile([build.nvcc(), *flags, str(build.CUDA_SOURCE)], out) is None
    rc = kernels.CudaKernels(out).probe()
    assert rc != 0
    monkeypatch.setattr(kernels, "find_cuda_library", lambda: Found(out, "built by nvcc on first use for sm_80"))
    monkeypatch.setattr(kernels, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(build, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(kernels.NvrtcKernels, "functions", lambda self: (0, {}))  # no driver to load it here
    got, how = fresh_load()
    assert isinstance(got, kernels.NvrtcKernels) and f"cannot run on this device (cudaError {rc})" in how


def test_load_falls_back_to_nvrtc_where_nvcc_is_absent(monkeypatch, fresh_load):
    monkeypatch.setattr(kernels, "find_cuda_library", lambda: Found(None, "nvcc not found"))
    monkeypatch.setattr(kernels, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(build, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(kernels.NvrtcKernels, "functions", lambda self: (0, {}))  # no driver to load it here
    got, how = fresh_load()
    assert isinstance(got, kernels.NvrtcKernels) and got.name == "nvrtc"
    assert how.startswith(f"nvrtc via cupy {kernels.cupy_version()}") and "sm_90" in how and "nvcc not found" in how
    assert got.path.read_bytes()[:4] == b"\x7fELF"


def test_load_says_why_neither_runs(monkeypatch, fresh_load):
    monkeypatch.setattr(kernels, "find_cuda_library", lambda: Found(None, "nvcc not found"))
    monkeypatch.setattr(kernels, "device_capability", lambda: (9, 0))
    monkeypatch.setattr(kernels, "find_nvrtc_module", lambda: Found(None, "libnvrtc did not load through cupy"))
    assert fresh_load() == (None, "nvcc: nvcc not found; nvrtc: libnvrtc did not load through cupy")


def test_nvrtc_launch_with_arguments_no_kernel_takes_is_refused_before_cuda(tmp_path, cubins):
    path = tmp_path / "m.cubin"
    path.write_bytes(cubins["sm_80"])
    k = kernels.NvrtcKernels(path)
    with pytest.raises(RuntimeError, match="cudaError 1 .cudaErrorInvalidValue: kv_factor 3"):
        k.launch(0, 0, 0, range(0, 1), 1, 8, 3, 2, 0, 8, 0, 1, False, 0)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue: kv_factor 2, itemsize 3"):
        k.launch(0, 0, 0, range(0, 1), 1, 8, 2, 3, 0, 8, 0, 1, False, 0)
    k.launch(0, 0, 0, range(0, 1), 1, 8, 2, 2, 0, 8, 0, 0, False, 0)  # no runs: nothing to launch, no CUDA call


@pytest.mark.gpu  # what a machine without a CUDA driver does; elsewhere test_cuda.py launches for real
@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="a CUDA driver is present: a launch would run")
def test_nvrtc_launch_without_a_driver_raises_naming_the_cuda_error(tmp_path, cubins):
    path = tmp_path / "m.cubin"
    path.write_bytes(cubins["sm_80"])
    runs = np.array([[0, 0, 0, 0, 1]], dtype=np.int64)
    with pytest.raises(RuntimeError, match="cudaError"):
        kernels.NvrtcKernels(path).launch(0, 0, 0, range(0, 1), 1, 8, 2, 2, 0, 8, runs.ctypes.data, 1, False, 0)


def test_triton_is_no_longer_a_backend(monkeypatch):
    built = build_cache("gpu_LBNHC", 1, 1, 8, 4, 2, torch.bfloat16, torch.Generator().manual_seed(0))
    before = [s.clone() for s in built.storages]
    monkeypatch.setenv("TIERD_NATIVE_BACKEND", "triton")
    with pytest.raises(InvalidArgumentError, match="TIERD_NATIVE_BACKEND='triton': use one of auto, cpp, cuda, torch$"):
        backend.copier(built.cache)
    with pytest.raises(InvalidArgumentError, match="backend 'triton': use one of auto, cpp, cuda, torch$"):
        backend.copier(built.cache, "triton")
    assert all(torch.equal(a, b) for a, b in zip(before, built.storages))


def test_report_names_the_kernel_path(monkeypatch):
    info = backend.report()
    assert "triton" not in info
    assert info["cupy"] == kernels.cupy_version() and re.fullmatch(r"\d+\.\d+", str(info["nvrtc"]))
    if torch.cuda.is_available():
        assert str(info["cuda_kernels"]).startswith(("nvcc library", "nvrtc via cupy", "none: "))
    else:
        assert info["cuda_kernels"] == f"none: {build.device_capability()}"
    monkeypatch.setattr(kernels, "load", lambda: (kernels.NvrtcKernels(build.CUDA_SOURCE), "nvrtc via cupy 14: x"))
    assert backend.report()["cuda_kernels"] == "nvrtc via cupy 14: x"


def test_report_names_the_device_pipeline(monkeypatch):
    monkeypatch.delenv("TIERD_CPU_STREAMS", raising=False)
    expect = "cuda streams" if torch.cuda.is_available() else "none: CPU caches"
    assert str(backend.report()["device_pipeline"]).startswith(expect)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TIERD_CPU_STREAMS", "staged")
        assert "TIERD_CPU_STREAMS=staged" in str(backend.report()["device_pipeline"])
