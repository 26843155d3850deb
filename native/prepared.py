"""A copy batch checked and described once, for every layer it will be launched for.

Why: a layer-wise load launches one copy per layer. Checking the chunks and runs, finding the
chunks' addresses and (on CUDA) uploading the descriptors for each of those launches is host
work per layer on the load path, which is what batching exists to remove. A copier's
`prepare` does it once per load or save batch; `launch(prepared, layers)` then only issues the
copy of those layers (on CUDA: one kernel launch, the descriptors already on the device).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from native.cache import PagedCache
from native.chunks import Buffer, ChunkBatch, chunk_batch
from native.runs import validate


@dataclass(slots=True)
class Prepared:
    """One batch: direction, chunk addresses, validated runs, and what the copier keeps for its
    launches (`state`: CUDA keeps the descriptors it uploaded). Keeps the chunks alive."""

    gather: bool
    batch: ChunkBatch
    runs: np.ndarray
    vectorise: bool = False
    state: dict[str, object] = field(default_factory=dict)

    @property
    def direction(self) -> int:
        """The kernels' direction argument: 0 gathers (cache -> chunks), 1 scatters."""
        return 0 if self.gather else 1


def prepare(cache: PagedCache, runs: np.ndarray, chunks: Sequence[Buffer], *, gather: bool) -> Prepared:
    """Check `chunks` (writable for a gather) and `runs` against `cache`; InvalidArgumentError
    before any byte moves."""
    batch = chunk_batch(cache, chunks, writable=gather)
    r = validate(runs, num_chunks=len(batch.ptrs), chunk_tokens=batch.tokens, num_blocks=cache.num_blocks,
                 block_size=cache.block_size)
    return Prepared(gather, batch, r)
