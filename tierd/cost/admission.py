"""The store's admission rule from the cost model: is a chunk worth writing to a lower tier?

A chunk goes to a lower tier only if reloading it from there can beat recomputing it at its
position in the prompt (`CostModel.admit`). Which model judges a chunk is set by the chunk's
own layout: each engine's chunks are judged by the model that engine declared
(`cost.models.LayoutModels`), so one engine declaring a fast device never stops another
engine's chunks from being written down. A chunk whose layout has no model is admitted:
nothing says its reload can never pay.

The rule is a pure predicate; the store counts what it refuses.
"""
from __future__ import annotations

from typing import Protocol

from tierd.cost.models import LayoutModels


class AdmittedChunk(Protocol):
    """What the rule reads of a stored chunk."""

    @property
    def layout_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def position(self) -> int:
        """The chunk's index in its prompt (chunk i covers tokens [i·chunk_tokens, (i+1)·chunk_tokens))."""
        ...


class CostAdmission:
    """`admission(chunk, tier_name) -> bool`, the hook the store calls before a write-down."""

    __slots__ = ("_models",)

    def __init__(self, models: LayoutModels) -> None:
        self._models = models

    def __call__(self, chunk: AdmittedChunk, tier: str) -> bool:
        found = self._models.model(chunk.layout_id)
        if found is None:
            return True
        layout, model = found
        if tier not in model.tiers:
            return True
        return model.admit(tier, layout.chunk_tokens, chunk.size, chunk.position * layout.chunk_tokens)
