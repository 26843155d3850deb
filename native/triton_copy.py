"""The gather/scatter as a Triton kernel: the GPU path wherever vLLM runs, nvcc or not.

Why a second GPU kernel: the CUDA library (csrc/gather_scatter.cu) is built with nvcc, which a
GPU machine set up with pip (torch and vLLM wheels) usually lacks; Triton comes with every
CUDA build of torch and every vLLM, and compiles at run time. Same descriptor, same grid, same
addressing as the CUDA kernel: per (layer, K/V, or the one MLA latent) a base address and element strides (block,
head, token, dim); runs of (chunk, chunk token, block, block offset, count); canonical chunks
`[layers, 2, chunk_tokens, heads * head_dim]` that may be device memory or the pinned arena
(host addresses are valid on the device once `native.pinned` has registered them).

One program per (run, layer, K/V) walks the run's heads x tokens x head_dim elements in tiles,
dim fastest, so neighbouring lanes touch neighbouring bytes on both sides. Elements move as
raw integers of their width: bf16, fp16, fp8 are never interpreted.

Checked without a GPU: Triton's interpreter runs the same kernel on CPU tensors, and
tests/native/test_triton.py compares it with the pure-torch reference bit for bit on random
layouts. NOT RUN on a GPU yet (none on the development machine).
"""
import functools
from typing import Sequence

import numpy as np
import torch

from native.cache import PagedCache
from native.chunks import Buffer, chunk_batch
from native.runs import layer_range, validate

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the backend reports why this path is off
    triton = tl = None  # type: ignore[assignment]

#: Elements per tile of one program.
TILE = 1024


def available() -> tuple[bool, str]:
    """Whether the Triton kernel can run on a device here, and why (for the doctor report)."""
    if triton is None:
        return False, "triton is not installed"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False, f"triton {triton.__version__} is installed but torch sees no CUDA device"
    return True, f"triton {triton.__version__}"


if tl is not None:  # defined only where Triton can parse it (its constexpr annotations)

    def _copy(gather, ptrs, strides, layer_lo, heads, head_dim, kvf, chunk_ptrs, chunk_tokens, runs,
              ITEM: tl.constexpr, TILE: tl.constexpr):  # noqa: N803 (Triton's constexpr style)
        r = tl.program_id(0)
        y = tl.program_id(1)
        layer = layer_lo + y // kvf
        kv = y % kvf
        run = runs + 5 * r
        chunk_index = tl.load(run)
        chunk_token = tl.load(run + 1)
        block = tl.load(run + 2)
        offset = tl.load(run + 3)
        tokens = tl.load(run + 4)
        s = strides + 4 * (kvf * layer + kv)
        s_block = tl.load(s)
        s_head = tl.load(s + 1)
        s_token = tl.load(s + 2)
        s_dim = tl.load(s + 3)
        paged = tl.load(ptrs + kvf * layer + kv).to(tl.pointer_type(ITEM))
        chunk = tl.load(chunk_ptrs + chunk_index).to(tl.pointer_type(ITEM))
        row = heads * head_dim
        paged_run = block * s_block + offset * s_token
        chunk_run = ((layer * kvf + kv) * chunk_tokens + chunk_token) * row
        total = heads * tokens * head_dim
        for start in range(0, total, TILE):
            i = start + tl.arange(0, TILE).to(tl.int64)
            live = i < total
            d = i % head_dim
            t = (i // head_dim) % tokens
            h = i // (head_dim * tokens)
            p = paged + paged_run + h * s_head + t * s_token + d * s_dim
            c = chunk + chunk_run + t * row + h * head_dim + d
            if gather:
                tl.store(c, tl.load(p, mask=live), mask=live)
            else:
                tl.store(p, tl.load(c, mask=live), mask=live)


@functools.cache
def kernel(interpret: bool):
    """The kernel, compiled for the device, or wrapped by Triton's interpreter (CPU tensors)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_copy)
    return triton.jit(_copy)


def _item_type(itemsize: int):
    return {1: tl.int8, 2: tl.int16, 4: tl.int32, 8: tl.int64}[itemsize]


class TritonCopier:
    """Gather/scatter for one cache through the Triton kernel, on the current CUDA stream (the
    interpreter on a CPU cache, for the tests). The descriptor goes to the device once; each
    call uploads its runs and chunk addresses."""

    backend = "triton"

    def __init__(self, cache: PagedCache) -> None:
        self.cache = cache
        self._interpret = cache.device.type != "cuda"
        self._kernel = kernel(self._interpret)
        self._ptrs = torch.from_numpy(cache.ptrs.copy()).to(cache.device)
        self._strides = torch.from_numpy(cache.strides.copy()).to(cache.device)

    def gather(self, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None = None) -> None:
        self._copy(True, runs, chunks, layers)

    def scatter(self, chunks: Sequence[Buffer], runs: np.ndarray, layers: range | None = None) -> None:
        self._copy(False, runs, chunks, layers)

    def _copy(self, gather: bool, runs: np.ndarray, chunks: Sequence[Buffer], layers: range | None) -> None:
        c = self.cache
        batch = chunk_batch(c, chunks, writable=gather)
        if not self._interpret:
            batch.check_reachable(c)
        r = validate(runs, num_chunks=len(batch.ptrs), chunk_tokens=batch.tokens, num_blocks=c.num_blocks,
                     block_size=c.block_size)
        want = layer_range(layers, c.num_layers)
        if not len(r) or not len(want):
            return
        if self._interpret:
            runs_d, ptrs_d = torch.from_numpy(r), torch.from_numpy(batch.ptrs)
        else:
            runs_d = torch.from_numpy(r).pin_memory().to(c.device, non_blocking=True)
            ptrs_d = torch.from_numpy(batch.ptrs).pin_memory().to(c.device, non_blocking=True)
        grid = (len(r), c.kv_factor * len(want))
        self._kernel[grid](gather, self._ptrs, self._strides, want.start, c.num_kv_heads, c.head_dim, c.kv_factor,
                           ptrs_d,
                           batch.tokens, runs_d, ITEM=_item_type(c.itemsize), TILE=TILE)
