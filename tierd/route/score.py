"""How much prefill time a node would save a request: the routing score.

Routers that know where KV is cached (llm-d, Dynamo) score nodes with fixed weights per tier
(GPU 1.0, CPU 0.8, ...). A weight cannot say that 40 chunks on NVMe beat 4 chunks in DRAM for a
long prompt but not for a short one, or that a node whose disk is slow is worth less. The score
here is the cost model's own answer (`tierd.cost.plan.CostModel.plan`): for each node, the
leading run of the prompt's chunks it holds, per tier, priced with *that node's* measured tier
costs against the model's prefill cost; the predicted seconds saved against recomputing the
whole prompt. A node that holds nothing saves nothing; a hit not worth loading saves nothing
either (the plan recomputes it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tierd.cost.plan import CostModel, Plan


@dataclass(frozen=True, slots=True)
class NodeScore:
    """One node's answer for one prompt. `saving_s` None: the node's model has no device
    throughput (nothing is known about prefill time); such nodes rank by cached tokens after
    every priced node."""

    node: str
    saving_s: float | None
    cached_tokens: int
    cached_by_tier: Mapping[str, int] = field(default_factory=dict)  # tokens per tier, leading run
    load_s: float | None = None
    plan: Plan | None = None
    error: str | None = None  # the node could not be asked (down, refused): it scores nothing

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "saving_s": self.saving_s, "cached_tokens": self.cached_tokens,
                "cached_by_tier": dict(self.cached_by_tier), "load_s": self.load_s,
                "plan": self.plan.to_dict() if self.plan is not None else None, "error": self.error}


def score_node(node: str, chunk_tiers: Sequence[str | None], model: CostModel, *, chunk_tokens: int,
               chunk_bytes: int, prompt_tokens: int) -> NodeScore:
    """Score one node from the tier of each of the prompt's chunks there (None: not held)."""
    run = next((i for i, t in enumerate(chunk_tiers) if t is None), len(chunk_tiers))
    held = list(chunk_tiers[:run])
    by_tier: dict[str, int] = {}
    for tier in held:
        by_tier[tier] = by_tier.get(tier, 0) + chunk_tokens  # type: ignore[index]
    cached = min(run * chunk_tokens, max(prompt_tokens - 1, 0))
    plan = model.plan(held, chunk_tokens, chunk_bytes, prompt_tokens)
    saving = plan.predicted_saving_s
    return NodeScore(node, max(saving, 0.0) if saving is not None else None, cached, by_tier,
                     plan.predicted_load_s if saving is not None else None, plan)


def choose(scores: Sequence[NodeScore], load: Mapping[str, float], *, band: float = 0.25) -> str:
    """The node a router should pick, balancing cache affinity with load: among the nodes whose
    saving is within `band` of the prompt's full recompute time of the best saving, the least
    loaded (`load`: the router's own measure, e.g. requests in flight). Without it, a prefix
    every node would like to hold (a shared system prompt) draws every request to the first node
    that cached it; with it, a conversation whose long history one node holds still goes there,
    while prompts that gain little anywhere spread by load. Nodes that could not be asked are
    never picked unless no node could be."""
    live = [s for s in scores if s.error is None] or list(scores)
    priced = [s for s in live if s.saving_s is not None]
    if not priced:
        return min(live, key=lambda s: (-s.cached_tokens, load.get(s.node, 0.0))).node
    best = max(s.saving_s for s in priced)  # type: ignore[type-var]
    full = max((s.plan.predicted_full_recompute_s or 0.0) for s in priced if s.plan is not None)
    close = [s for s in priced if s.saving_s >= best - band * full]  # type: ignore[operator]
    return min(close, key=lambda s: load.get(s.node, 0.0)).node


def rank(scores: Sequence[NodeScore]) -> list[NodeScore]:
    """Best node first: the most predicted seconds saved; nodes without a priced model after
    those, by cached tokens; unreachable nodes last. Ties keep the given order (a router's
    own tie-break, e.g. load, comes from the order it passes the nodes in)."""
    def key(s: NodeScore) -> tuple[int, float]:
        if s.error is not None:
            return (2, 0.0)
        if s.saving_s is None:
            return (1, -float(s.cached_tokens))
        return (0, -s.saving_s)

    return sorted(scores, key=key)
