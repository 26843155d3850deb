"""Which tokens of which chunk live where in the paged cache: runs of consecutive tokens that
sit in one block.

Why runs and not per-token slots: a kernel that knows a stretch of tokens is contiguous in a
block can copy it (or transpose it, for dim-major K) as one piece. Runs still express
everything a slot mapping can: chunks that start or end mid-block, any block ids in any order.
Every run is validated here, once, so the native kernels never check bounds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tierd.errors import InvalidArgumentError

#: Columns of a runs array (int64 [n, 5]).
CHUNK, TOKEN, BLOCK, OFFSET, COUNT = range(5)


def block_runs(block_ids: Sequence[int], block_size: int, *, chunk: int = 0, first_token: int = 0,
               num_tokens: int | None = None, block_offset: int = 0) -> np.ndarray:
    """Runs for `num_tokens` tokens of chunk `chunk`, starting at chunk token `first_token`,
    held by `block_ids` in token order starting `block_offset` tokens into the first block.
    Default `num_tokens`: up to the end of the last block."""
    if block_size <= 0:
        raise InvalidArgumentError(f"block_size {block_size}: must be positive")
    if not 0 <= block_offset < block_size:
        raise InvalidArgumentError(f"block_offset {block_offset}: must be in [0, block_size={block_size})")
    capacity = len(block_ids) * block_size - block_offset
    n = capacity if num_tokens is None else num_tokens
    if not 0 <= n <= capacity:
        raise InvalidArgumentError(f"num_tokens {num_tokens}: {len(block_ids)} blocks from offset {block_offset} hold {capacity}")
    rows = []
    done, offset = 0, block_offset
    for b in block_ids:
        if done == n:
            break
        count = min(block_size - offset, n - done)
        rows.append((chunk, first_token + done, int(b), offset, count))
        done += count
        offset = 0
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


def slot_runs(slots: Sequence[int] | np.ndarray, block_size: int, *, chunk: int = 0, first_token: int = 0) -> np.ndarray:
    """Runs from a vLLM-style slot mapping (slot = block * block_size + offset) for consecutive
    chunk tokens starting at `first_token`; neighbouring slots in one block merge into one run."""
    s = np.asarray(slots, dtype=np.int64).reshape(-1)
    if s.size == 0:
        return np.zeros((0, 5), dtype=np.int64)
    if (s < 0).any():
        raise InvalidArgumentError("slot mapping has negative slots (padding?): pass only the chunk's real tokens")
    blocks, offsets = s // block_size, s % block_size
    breaks = np.flatnonzero((blocks[1:] != blocks[:-1]) | (offsets[1:] != offsets[:-1] + 1)) + 1
    starts = np.concatenate(([0], breaks))
    counts = np.diff(np.concatenate((starts, [s.size])))
    return np.stack([np.full_like(starts, chunk), first_token + starts, blocks[starts], offsets[starts], counts], axis=1)


def concat(*runs: np.ndarray) -> np.ndarray:
    """Runs of several chunks as one batch (one kernel call)."""
    return np.ascontiguousarray(np.concatenate(runs, axis=0) if runs else np.zeros((0, 5), np.int64), dtype=np.int64)


def validate(runs: np.ndarray, *, num_chunks: int, chunk_tokens: int, num_blocks: int, block_size: int) -> np.ndarray:
    """`runs` as a contiguous int64 [n, 5] array, or InvalidArgumentError naming the first bad run.
    Nothing may address outside the chunks or the cache: the kernels trust these numbers."""
    r = np.ascontiguousarray(runs, dtype=np.int64)
    if r.ndim != 2 or r.shape[1] != 5:
        raise InvalidArgumentError(f"runs must be an [n, 5] array (chunk, token, block, offset, count), got {r.shape}")
    if r.size == 0:
        return r
    c, t, b, o, n = (r[:, i] for i in range(5))
    bad = ((c < 0) | (c >= num_chunks) | (t < 0) | (n <= 0) | (t + n > chunk_tokens)
           | (b < 0) | (b >= num_blocks) | (o < 0) | (o + n > block_size))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgumentError(
            f"run {i} {tuple(int(x) for x in r[i])} (chunk, token, block, offset, count) is outside {num_chunks} chunks "
            f"of {chunk_tokens} tokens or {num_blocks} blocks of {block_size} tokens"
        )
    return r


def layer_range(layers: range | None, num_layers: int) -> range:
    """`layers` checked (consecutive, within the cache), or every layer when None."""
    if layers is None:
        return range(num_layers)
    if layers.step != 1 or not 0 <= layers.start <= layers.stop <= num_layers:
        raise InvalidArgumentError(f"layers {layers}: use a range of consecutive layers within [0, {num_layers}]")
    return layers
