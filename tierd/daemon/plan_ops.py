"""Request handlers of the cost model: the plan a lookup carries, `costs`, `observe_prefill`
and `explain`.

The models themselves (`tierd.cost.models.LayoutModels`: one per layout, shape from its engine's
plan requests, device declared or learned from the prefill times its connector reports) are
made and wired to the store's admission by the dispatcher; these handlers only read and feed
them.
"""
from __future__ import annotations

from typing import Any, Callable

from tierd.cost.models import LayoutModels
from tierd.daemon.scope import Bindings
from tierd.errors import InvalidArgumentError
from tierd.store import Session, TieredStore
from tierd.store.chunk import check_keys


class PlanOps:
    """The cost-model handlers of one store."""

    def __init__(self, store: TieredStore, bindings: Bindings, models: LayoutModels) -> None:
        self.store = store
        self.bindings = bindings
        self.models = models

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        return {"costs": self.costs, "observe_prefill": self.observe_prefill, "explain": self.explain}

    def plan(self, request: dict[str, Any], codes: bytes) -> dict[str, Any]:
        """The cost model's answer for a lookup whose present prefix has `codes`
        (`LayoutModels.plan_request`)."""
        tier_names = self.store.tier_names
        return self.models.plan_request(request, self.store.layout, [tier_names[c] for c in codes]).to_dict()

    def observe_prefill(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """A prefill of tokens [start, end) took `seconds` on the engine of `layout_id` (default:
        the layout planned for last): refine its learned device (used by plans when the engine
        declares none)."""
        start, end, seconds = args["start"], args["end"], float(args["seconds"])
        if not 0 <= start < end or not seconds > 0:
            raise InvalidArgumentError(f"observe_prefill: need 0 <= start < end and seconds > 0, got {start}, {end}, {seconds}")
        layout_id = args.get("layout_id")
        if layout_id is not None:
            self.store.layout(layout_id)  # an unregistered layout is an error, not a silent no-op
        learned = self.models.observe_prefill(layout_id, start, end, seconds)
        if learned is None:
            return {"observed": False}  # no shape yet: the engine has not asked for a plan
        return {"observed": True, "device": learned.to_dict()}

    def costs(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Tier costs, every layout's model, and one model's shape and device: `layout_id`'s, or
        by default the one planned for last."""
        layout_id = args.get("layout_id")
        if layout_id is not None:
            self.store.layout(layout_id)
        found = self.models.model(layout_id)
        model = found[1] if found is not None else None
        return {"tiers": {n: c.to_dict() for n, c in self.store.costs.items()},
                "layout_id": found[0].layout_id if found is not None else None,
                "device": model.device.to_dict() if model is not None else None,
                "shape": model.shape.to_dict() if model is not None else None,
                "models": self.models.to_dict()}

    def explain(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Where each key is and what loading it costs; plus the plan, when the engine of the
        first key's layout has told the daemon its model (through a lookup with a plan
        request). Counts as no lookup."""
        keys = self.bindings.store_keys(session, args["keys"])
        tier_names = self.store.tier_names
        scope = self.bindings.bound(session)
        if scope is not None:
            check_keys(keys)
        rows, codes = [], bytearray()
        for key in keys:
            c = self.store.index.get(key)
            if scope is not None and not scope.visible(c, unknown_ok=True):
                c = None  # another namespace's chunk: absent to this connection
            code = c.tier_code if c is not None else 255
            codes.append(code)
            tier = tier_names[code] if code < len(tier_names) else None
            rows.append({"key": key.hex(), "tier": tier, "size": c.size if c else None,
                         "load_s": self.store.costs[tier].predict(c.size) if c and tier in self.store.costs else None})
        prefix = codes.find(255)
        prefix = len(codes) if prefix < 0 else prefix
        plan = None
        first = self.store.index.get(keys[0]) if keys and codes[0] != 255 else None
        layout = self.store.layouts.get(first.layout_id) if first is not None else None
        if layout is not None:
            prompt = args.get("prompt_tokens") or len(keys) * layout.chunk_tokens + 1
            found = self.models.plan(layout.layout_id, [tier_names[c] for c in codes[:prefix]], prompt)
            plan = found.to_dict() if found is not None else None
        return {"chunks": rows, "prefix": prefix, "plan": plan}
