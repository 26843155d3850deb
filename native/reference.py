"""The pure-torch reference gather/scatter: the oracle the native kernels are tested against,
and the fallback where no native library is built.

Written for obviousness, not speed: one advanced-indexing read or write per (chunk, layer,
K/V) over per-token (block, offset) index vectors, through the same K/V views the engine's
attention reads (`PagedCache`), so it shares no code path with the kernels it checks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from native.cache import RAW_DTYPES, PagedCache
from native.runs import BLOCK, CHUNK, COUNT, OFFSET, TOKEN


def _token_index(runs: np.ndarray, chunk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chunk tokens, blocks, in-block offsets) of every token of `chunk`'s runs."""
    mine = runs[runs[:, CHUNK] == chunk]
    if len(mine) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, empty
    steps = np.concatenate([np.arange(n) for n in mine[:, COUNT]])
    reps = mine[:, COUNT]
    tokens = np.repeat(mine[:, TOKEN], reps) + steps
    blocks = np.repeat(mine[:, BLOCK], reps)
    offsets = np.repeat(mine[:, OFFSET], reps) + steps
    return tuple(torch.from_numpy(a).to(device) for a in (tokens, blocks, offsets))  # type: ignore[return-value]


def _raw(chunk: torch.Tensor, cache: PagedCache) -> torch.Tensor:
    return chunk.view(RAW_DTYPES[cache.itemsize]).view(-1).view(cache.num_layers, cache.kv_factor, -1, cache.chunk_row)


def gather(cache: PagedCache, runs: np.ndarray, chunks: Sequence[torch.Tensor], layers: range | None = None) -> None:
    """chunks[c][layer, kv, token] = the paged K/V of that token, for every token of `runs`."""
    want = layers if layers is not None else range(cache.num_layers)
    h, d = cache.num_kv_heads, cache.head_dim
    for c, chunk in enumerate(chunks):
        out = _raw(chunk, cache)
        tokens, blocks, offsets = _token_index(runs, c, cache.device)
        if len(tokens) == 0:
            continue
        for layer in want:
            for kv, views in enumerate(cache.views):
                out[layer, kv, tokens] = views[layer][blocks, :, offsets, :].reshape(len(tokens), h * d)


def scatter(cache: PagedCache, chunks: Sequence[torch.Tensor], runs: np.ndarray, layers: range | None = None) -> None:
    """The paged K/V of every token of `runs` = chunks[c][layer, kv, token]."""
    want = layers if layers is not None else range(cache.num_layers)
    h, d = cache.num_kv_heads, cache.head_dim
    for c, chunk in enumerate(chunks):
        src = _raw(chunk, cache)
        tokens, blocks, offsets = _token_index(runs, c, cache.device)
        if len(tokens) == 0:
            continue
        for layer in want:
            for kv, views in enumerate(cache.views):
                views[layer][blocks, :, offsets, :] = src[layer, kv, tokens].reshape(len(tokens), h, d)
