"""The CUDA copier: the gather/scatter kernels (`native.kernels`: one source, built by nvcc or
NVRTC) launched on the current torch stream for one device cache.

A batch is checked once (`prepare`: every chunk in device or pinned host memory, runs in
bounds, 16-byte grouping) and its runs and chunk addresses go to the device in one small copy
with its first launch; every further launch of the batch (one per layer on the load path) is
the kernel launch alone. The chunk side may be device memory or pinned host memory (a torch
pinned tensor, or the arena registered by `native.device_cuda`), so a gather writes straight
into the arena.

NOT RUN on a GPU yet (none on the development machine). What runs without one: the packed
descriptors launched per layer through the kernel's host emulation against the reference
(tests/native/test_cuda_launch.py); the upload and the stream run only in
tests/native/test_cuda.py, wherever torch sees a GPU.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from native.cache import PagedCache
from native.chunks import Buffer
from native.kernels import CudaKernels, NvrtcKernels, vectorisable
from native.prepared import Prepared, prepare
from native.runs import layer_range
from tierd.errors import InvalidArgumentError


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

    def __init__(self, cache: PagedCache, kernels: CudaKernels | NvrtcKernels) -> None:
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
