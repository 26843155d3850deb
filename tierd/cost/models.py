"""One cost model per layout: what each engine has told the daemon about its model and device.

An engine declares its model's shape (and, if it knows it, its device's FLOP/s) in the plan
request of a lookup, and its connector reports how long its prefills took (`observe_prefill`).
Engines serving different models register different layouts, so the daemon keeps one model per
layout: each engine's plans, its learned device and the admission of its chunks
(`cost.admission`) follow its own model, never the one another engine declared last.

The daemon-wide views (`costs` without a layout, `tierd plan --socket`) show the model whose
plan was asked for last: with one engine, that engine's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from tierd.cost.device import DeviceThroughput
from tierd.cost.plan import CostModel, Plan
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.errors import InvalidArgumentError, names, shown
from tierd.layout import Layout

#: The fields of a lookup's plan request.
PLAN_REQUEST_FIELDS = frozenset({"layout_id", "prompt_tokens", "shape", "device"})


@dataclass(slots=True)
class _Declared:
    """One layout's model, and what it was built from (to tell a re-declaration from a repeat)."""

    layout: Layout
    model: CostModel
    key: str


class LayoutModels:
    """The cost models of the layouts whose engines have asked for a plan, by layout id.

    `tier_costs` returns the store's current tier costs (start-up calibration replaces them
    once): each model is handed them when it is used, so plans and admission always price the
    tiers as the store does now. Called on the daemon's event loop only.
    """

    __slots__ = ("_tier_costs", "_declared", "_learned", "_latest")

    def __init__(self, tier_costs: Callable[[], dict[str, TierCost]]) -> None:
        self._tier_costs = tier_costs
        self._declared: dict[str, _Declared] = {}
        #: Devices learned from each layout's engine's prefills (kept when its model is re-declared).
        self._learned: dict[str, DeviceThroughput] = {}
        self._latest: str | None = None

    def model(self, layout_id: str | None = None) -> tuple[Layout, CostModel] | None:
        """The layout and model declared for `layout_id` (default: the one planned for last), or
        None when no engine of that layout has declared its model yet."""
        key = self._latest if layout_id is None else layout_id
        entry = self._declared.get(key) if key is not None else None
        if entry is None:
            return None
        entry.model.tiers = self._tier_costs()
        return entry.layout, entry.model

    def plan_request(self, request: Mapping[str, Any], layout_of: Callable[[Any], Layout],
                     prefix_tiers: Sequence[str]) -> Plan:
        """The plan for a lookup whose leading hits lie in `prefix_tiers`, as the engine asked.

        `request`: {"layout_id", "prompt_tokens", "shape": ModelShape dict, "device":
        DeviceThroughput dict or None}; the engine knows its model and measures its prefills,
        the daemon knows its tiers. A shape or device that differs from what this layout's
        engine declared before replaces its model; without a declared device the model uses the
        device learned from this layout's prefills. `layout_of` resolves the layout id (and
        refuses an unregistered one)."""
        unknown = names(set(request) - PLAN_REQUEST_FIELDS)
        if unknown:
            raise InvalidArgumentError(f"plan: unknown field(s) {unknown}")
        layout = layout_of(request.get("layout_id"))
        prompt_tokens = request.get("prompt_tokens")
        if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool):
            raise InvalidArgumentError(f"plan.prompt_tokens {shown(prompt_tokens)}: must be an integer")
        self._declare(layout, request.get("shape"), request.get("device"))
        self._latest = layout.layout_id
        plan = self.plan(layout.layout_id, prefix_tiers, prompt_tokens)
        assert plan is not None  # just declared
        return plan

    def plan(self, layout_id: str, prefix_tiers: Sequence[str], prompt_tokens: int) -> Plan | None:
        """This layout's model's plan for a prefix held in `prefix_tiers` (chunks past the
        prompt's last full chunk are left out); None when the layout has no model."""
        found = self.model(layout_id)
        if found is None:
            return None
        layout, model = found
        covered = min(len(prefix_tiers), prompt_tokens // layout.chunk_tokens)
        return model.plan(prefix_tiers[:covered], layout.chunk_tokens, layout.chunk_bytes, prompt_tokens)

    def observe_prefill(self, layout_id: str | None, start: int, end: int, seconds: float) -> DeviceThroughput | None:
        """A prefill of tokens [start, end) took `seconds` on the engine of `layout_id` (default:
        the layout planned for last): refine that layout's learned device. None (nothing
        learned) while the layout has no model: its shape, which turns tokens into FLOPs, is
        not known yet."""
        found = self.model(layout_id)
        if found is None:
            return None
        layout, model = found
        learned = self._learned.setdefault(layout.layout_id, DeviceThroughput())
        learned.observe_split(*model.shape.flops_parts(end, start), seconds)
        return learned

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{layout_id: {"shape", "device"}} of every declared model."""
        return {i: {"shape": d.model.shape.to_dict(), "device": d.model.device.to_dict()}
                for i, d in self._declared.items()}

    def _declare(self, layout: Layout, shape: Any, device: Any) -> None:
        key = shown((shape, device))  # bounded: a hostile shape cannot blow it up
        current = self._declared.get(layout.layout_id)
        if current is not None and current.key == key:
            return
        model_shape = ModelShape.from_dict(shape or {})
        if device:
            chosen = DeviceThroughput.from_dict(device)
        else:
            chosen = self._learned.setdefault(layout.layout_id, DeviceThroughput())
        model = CostModel(model_shape, chosen)
        self._declared[layout.layout_id] = _Declared(layout, model, key)
