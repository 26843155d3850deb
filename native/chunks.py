"""The chunk side of a copy: canonical [layers, kv_factor, tokens, heads * head_dim] buffers, given as
torch tensors or as raw arena bytes (numpy arrays), turned into addresses for the kernels.

Why checked here: the kernels trust every address and length, so a buffer of the wrong size
must fail in Python with a message, not scribble past an arena slot.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from native.cache import RAW_DTYPES, PagedCache
from tierd.errors import InvalidArgumentError

Buffer = Union[torch.Tensor, np.ndarray]


def as_bytes(buf: Buffer) -> torch.Tensor:
    """`buf` (an arena view or a tensor) as a flat uint8 tensor over the same memory (a leased
    view is read-only: fine to read from)."""
    if isinstance(buf, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(buf.reshape(-1).view(np.uint8))
    return buf.reshape(-1).view(torch.uint8)


@dataclass(frozen=True, slots=True)
class ChunkBatch:
    """Addresses of a batch of equally sized canonical chunks, and how many tokens each holds."""

    ptrs: np.ndarray  # int64 [chunks]
    tokens: int
    buffers: tuple[Buffer, ...]  # kept so the memory outlives the call

    def tensors(self, cache: PagedCache) -> list[torch.Tensor]:
        """The chunks as torch tensors of raw elements, [layers, 2, tokens, row] (for the reference)."""
        return [as_bytes(b).view(RAW_DTYPES[cache.itemsize]).view(cache.num_layers, cache.kv_factor, self.tokens,
                                                                   cache.chunk_row) for b in self.buffers]

    def check_reachable(self, cache: PagedCache) -> None:
        """For device copies: every chunk in device memory or pinned host memory (the kernels
        address it from the GPU), else InvalidArgumentError before any byte moves."""
        for i, t in enumerate(self.tensors(cache)):
            if t.device != cache.device and not t.is_pinned():
                raise InvalidArgumentError(
                    f"chunk {i} is on {t.device} and not pinned: register the arena (native.pinned.pin) or pass a "
                    "device or pinned tensor"
                )


def chunk_batch(cache: PagedCache, chunks: Sequence[Buffer], *, writable: bool) -> ChunkBatch:
    """Check that every chunk is one contiguous canonical chunk of the same token count."""
    if not chunks:
        raise InvalidArgumentError("no chunks given")
    per_token = cache.num_layers * cache.kv_factor * cache.chunk_row * cache.itemsize
    ptrs, tokens = [], None
    for i, c in enumerate(chunks):
        if isinstance(c, torch.Tensor):
            if not c.is_contiguous():
                raise InvalidArgumentError(f"chunk {i} is not contiguous; pass the arena slot (or a contiguous tensor)")
            nbytes, ptr = c.numel() * c.element_size(), c.data_ptr()
        elif isinstance(c, np.ndarray):
            if not c.flags.c_contiguous:
                raise InvalidArgumentError(f"chunk {i} is not a contiguous array")
            if writable and not c.flags.writeable:
                raise InvalidArgumentError(f"chunk {i} is read-only; a gather writes into it")
            nbytes, ptr = c.nbytes, c.ctypes.data
        else:
            raise InvalidArgumentError(f"chunk {i} is a {type(c).__name__}; pass a torch tensor or a numpy array")
        if nbytes == 0 or nbytes % per_token:
            raise InvalidArgumentError(
                f"chunk {i} has {nbytes} bytes, not a whole number of tokens of {per_token} bytes "
                f"([{cache.num_layers}, {cache.kv_factor}, tokens, {cache.chunk_row}] x {cache.itemsize} B)"
            )
        if tokens is not None and nbytes // per_token != tokens:
            raise InvalidArgumentError(f"chunk {i} holds {nbytes // per_token} tokens, chunk 0 holds {tokens}")
        tokens = nbytes // per_token
        ptrs.append(ptr)
    return ChunkBatch(np.array(ptrs, dtype=np.int64), int(tokens or 0), tuple(chunks))
