"""The CUDA kernels (csrc/gather_scatter.cu), loaded with ctypes and launched on torch streams.

One launch per call moves every run of every requested layer of a batch of chunks. The chunk
side may be device memory or pinned host memory (a torch pinned tensor, or the arena after
`native.pinned.pin`), so a gather can DMA straight into the arena.

NOT RUN on a GPU yet (none on the development machine). What is checked without one: the
source compiles with nvcc (tests compile it wherever nvcc exists), and the kernel's body
(csrc/gather_scatter_item.h) is compiled for the host and run over the same grid against the
pure-torch reference, 16-byte groups included (tests/native/test_cuda_emulated.py). This
wrapper, streams and pinning run only in tests/native/test_cuda.py, wherever torch sees a GPU.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from native.build import find_cuda_library
from native.cache import PagedCache
from native.chunks import Buffer
from native.prepared import Prepared, prepare
from native.runs import layer_range
from tierd.errors import InvalidArgumentError

ABI = 2
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
VECTOR_BYTES = 16


def vectorisable(cache: PagedCache, chunk_ptrs: np.ndarray) -> bool:
    """Whether the kernel may move 16-byte groups: unit dim stride on the paged side, and every
    head row starting 16-byte aligned on both sides (bases, strides and row lengths)."""
    isz = cache.itemsize
    return bool(
        (cache.strides[:, :, 3] == 1).all()
        and (cache.head_dim * isz) % VECTOR_BYTES == 0
        and (cache.ptrs % VECTOR_BYTES == 0).all()
        and ((cache.strides[:, :, :3] * isz) % VECTOR_BYTES == 0).all()
        and (chunk_ptrs % VECTOR_BYTES == 0).all()
    )


class CudaKernels:
    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        if lib.tierd_cuda_abi() != ABI:
            raise OSError(f"{path} speaks CUDA ABI {lib.tierd_cuda_abi()}, this package {ABI}")
        fn = lib.tierd_cuda_gather_scatter
        fn.argtypes = [ctypes.c_int, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, ctypes.c_int, _PTR]
        fn.restype = ctypes.c_int
        self._fn = fn

    def launch(self, direction: int, ptrs: int, strides: int, layers: range, heads: int, head_dim: int,
               kv_factor: int, itemsize: int, chunk_ptrs: int, chunk_tokens: int, runs: int, num_runs: int,
               vectorise: bool, stream: int) -> None:
        rc = self._fn(direction, ptrs, strides, layers.start, layers.stop, heads, head_dim, kv_factor, itemsize,
                      chunk_ptrs, chunk_tokens, runs, num_runs, int(vectorise), stream)
        if rc != 0:
            raise RuntimeError(f"tierd CUDA gather/scatter launch failed: cudaError {rc}")


@functools.cache
def load() -> tuple[CudaKernels | None, str]:
    found = find_cuda_library()
    if found.path is None:
        return None, found.how
    try:
        return CudaKernels(found.path), f"{found.path} ({found.how})"
    except (OSError, AttributeError) as exc:
        return None, f"{found.path} did not load: {exc}"


def descriptors(p: Prepared) -> tuple[np.ndarray, int]:
    """A batch's runs and chunk addresses as one int64 array (one upload for every launch of the
    batch), and the byte offset of the addresses in it."""
    return np.concatenate([p.runs.reshape(-1), p.batch.ptrs]).astype(np.int64, copy=False), p.runs.size * 8


class CudaCopier:
    """Gather/scatter for one device cache. The cache's descriptor goes to the device once; a
    batch's runs and chunk addresses are checked once (`prepare`) and go to the device with its
    first launch (one small host-to-device copy on the launch's stream); every further launch
    of the batch (one per layer on the load path) is only the kernel launch."""

    backend = "cuda"
    #: Its kernels address pinned host memory in place (unified addressing).
    reaches_host = True

    def __init__(self, cache: PagedCache, kernels: CudaKernels) -> None:
        if cache.device.type != "cuda":
            raise InvalidArgumentError(f"the CUDA kernels need a device cache, this one is on {cache.device}")
        self.cache = cache
        self.kernels = kernels
        self._ptrs = torch.from_numpy(cache.ptrs.copy()).to(cache.device)
        self._strides = torch.from_numpy(cache.strides.copy()).to(cache.device)

    def gather(self, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=True), layers)

    def scatter(self, chunks: Sequence[Buffer], runs: np.ndarray, layers: range | None = None) -> None:
        self.launch(self.prepare(runs, chunks, gather=False), layers)

    def prepare(self, runs: np.ndarray, chunks: Sequence[Buffer], *, gather: bool) -> Prepared:
        """Check the batch once: every chunk in device or pinned memory, the runs in bounds."""
        p = prepare(self.cache, runs, chunks, gather=gather)
        p.batch.check_reachable(self.cache)
        p.vectorise = vectorisable(self.cache, p.batch.ptrs)
        return p

    def launch(self, p: Prepared, layers: range | None = None) -> None:
        """Queue the copy of `layers` of batch `p` on the current stream."""
        c = self.cache
        want = layer_range(layers, c.num_layers)
        if not len(p.runs) or not len(want):
            return
        stream = torch.cuda.current_stream(c.device)
        on_device = p.state.get("descriptors")
        if on_device is None:  # one copy, on this stream, before the first launch that reads it
            block, p.state["ptrs_at"] = descriptors(p)
            on_device = p.state["descriptors"] = torch.from_numpy(block).pin_memory().to(c.device, non_blocking=True)
            p.state["stream"] = stream  # the allocator reuses its memory only after this stream's work
        elif p.state["stream"] != stream:
            on_device.record_stream(stream)  # type: ignore[union-attr]
        runs_d = on_device.data_ptr()  # type: ignore[union-attr]
        ptrs_d = runs_d + int(p.state["ptrs_at"])  # type: ignore[call-overload]
        self.kernels.launch(p.direction, self._ptrs.data_ptr(), self._strides.data_ptr(), want, c.num_kv_heads,
                            c.head_dim, c.kv_factor, c.itemsize, ptrs_d, p.batch.tokens, runs_d, len(p.runs),
                            p.vectorise, stream.cuda_stream)
