"""Where the cost model decides: load a cached prefix from its tiers, or recompute it?

DESIGN.md's one inequality, made quantitative on both sides:

    latency_T + bytes / bandwidth_T     (load side: `TierCost`, measured and updated online)
    overhead + FLOPs(p) / throughput    (recompute side: `ModelShape` + `DeviceThroughput`)

`CostModel.plan` answers it per lookup: for a prefix hit spread over tiers, how many leading
chunks to load and where the engine starts recomputing, minimising predicted time to first
token. `CostModel.admit` is the admission rule (don't write a chunk to a tier it can never pay
to reload from), `CostModel.break_even_tokens` the operator's view of the same inequality.

Everything here is pure arithmetic on a few floats: `plan` runs on every lookup, so it is one
pass over the chunks with O(1) work per chunk and no allocation beyond the result.

The FLOP count behind the recompute side is derived in `cost/shape.py`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from tierd.cost.checks import finite, positive_int
from tierd.cost.device import DeviceThroughput
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.errors import InvalidArgumentError, shown

#: Default longest prompt considered by `break_even_tokens` when the shape names no context length.
DEFAULT_MAX_TOKENS = 131_072


@dataclass(frozen=True, slots=True)
class TierLoad:
    """The part of a plan's load that comes from one tier (one batched transfer)."""

    tier: str
    chunks: int
    nbytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Plan:
    """What to load and what to recompute for one lookup; part of the lookup response.

    The engine loads chunks [0, load_chunks) and prefills tokens [recompute_from_token,
    prompt_tokens). recompute_from_token is at most prompt_tokens − 1: the engine must compute
    the last prompt token to get its logits, even on a full hit. Times are None when the device
    throughput is unknown (then every present leading chunk is loaded, `decided_by` says so).
    """

    prompt_tokens: int
    chunk_tokens: int
    present_chunks: int
    load_chunks: int
    load_tokens: int
    recompute_from_token: int
    predicted_load_s: float
    predicted_recompute_s: float | None
    predicted_ttft_s: float | None
    predicted_full_recompute_s: float | None
    tiers: tuple[TierLoad, ...] = field(default=())
    decided_by: str = "cost"

    @property
    def predicted_saving_s(self) -> float | None:
        if self.predicted_ttft_s is None or self.predicted_full_recompute_s is None:
            return None
        return self.predicted_full_recompute_s - self.predicted_ttft_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiers"] = [asdict(t) for t in self.tiers]
        return d


class CostModel:
    """Tier costs + model shape + device throughput, and the decisions built on them.

    Tiers load sequentially in a plan: each tier used pays its latency once and its bytes at its
    bandwidth, and the tiers' times add up. Real loads may overlap tiers (DRAM copies while an
    NVMe read is in flight); assuming they don't over-predicts load time, which errs towards
    recomputing — the side whose cost is known best.
    """

    __slots__ = ("shape", "device", "tiers")

    def __init__(self, shape: ModelShape, device: DeviceThroughput | None = None,
                 tiers: Mapping[str, TierCost] | Iterable[TierCost] = ()) -> None:
        if not isinstance(shape, ModelShape):
            raise InvalidArgumentError(f"shape {shape!r}: must be a ModelShape")
        self.shape = shape
        self.device = device if device is not None else DeviceThroughput()
        items = tiers.values() if isinstance(tiers, Mapping) else tiers
        self.tiers: dict[str, TierCost] = {}
        for t in items:
            self.tiers[t.name] = t

    def tier(self, name: str) -> TierCost:
        try:
            return self.tiers[name]
        except KeyError:
            raise InvalidArgumentError(
                f"tier {name!r} has no cost entry: known tiers are {sorted(self.tiers)}; calibrate or declare it"
            ) from None

    # -- predictions -------------------------------------------------------------------------

    def load_seconds(self, tier: str, nbytes: float) -> float:
        """Predicted seconds to read `nbytes` from `tier` as one batch."""
        return self.tier(tier).predict(nbytes)

    def recompute_seconds(self, p_tokens: int, start: int = 0) -> float:
        """Predicted prefill seconds of tokens [start, p_tokens) with the KV of [0, start) loaded.

        = overhead + (FLOPs(p) − FLOPs(start) + LM head) / throughput; 0 when start >= p_tokens.
        """
        if start >= p_tokens:
            return 0.0
        return self.device.seconds(self.shape.prefill_flops(p_tokens, start,
                                                            attention_weight=self.device.attention_weight))

    def observe_transfer(self, tier: str, nbytes: float, seconds: float) -> None:
        self.tier(tier).observe(nbytes, seconds)

    def observe_prefill(self, tokens: int, seconds: float, start: int = 0) -> None:
        """Fold in an engine prefill of tokens [start, tokens) that took `seconds`."""
        self.device.observe_split(*self.shape.flops_parts(tokens, start), seconds)

    # -- the decision -----------------------------------------------------------------------

    def plan(self, chunk_tiers: Sequence[str | None], chunk_tokens: int, chunk_bytes: int,
             prompt_tokens: int) -> Plan:
        """Choose k, the leading chunks to load, minimising predicted time to first token.

        chunk_tiers[i] is the tier holding chunk i (tokens [i·chunk_tokens, (i+1)·chunk_tokens))
        or None on a miss; only the leading run before the first miss can be loaded. For each
        k in 0..run: TTFT(k) = Σ over tiers used by chunks [0, k) of (latency + bytes/bandwidth)
        + recompute of [min(k·chunk_tokens, prompt_tokens − 1), prompt_tokens). One pass, O(1)
        per candidate (running per-tier sums, closed-form FLOPs); ties keep the smaller k.
        """
        positive_int("plan", "chunk_tokens", chunk_tokens)
        positive_int("plan", "chunk_bytes", chunk_bytes)
        positive_int("plan", "prompt_tokens", prompt_tokens)
        n = len(chunk_tiers)
        if n * chunk_tokens > prompt_tokens:
            raise InvalidArgumentError(
                f"plan: {n} chunks of {chunk_tokens} tokens cover {n * chunk_tokens} tokens, more than "
                f"prompt_tokens {prompt_tokens}; pass only the prompt's full chunks"
            )
        run = 0
        while run < n and chunk_tiers[run] is not None:
            run += 1
        last = prompt_tokens - 1

        if not self.device.known:
            loads = self._tier_loads(chunk_tiers, run, chunk_bytes)
            return Plan(prompt_tokens, chunk_tokens, run, run, run * chunk_tokens, min(run * chunk_tokens, last),
                        sum(t.seconds for t in loads), None, None, None, loads, "load-all: device throughput unknown")

        # recompute(s) = overhead + (FLOPs(s → prompt) + LM head) · s/FLOP, the closed form of
        # `recompute_seconds` with the constants hoisted: O(1) per candidate, no calls.
        overhead, spf = self.device.params()
        shape = self.shape
        per_token = shape.num_layers * shape.linear_flops_per_token * spf
        per_pair = shape.num_layers * shape.attention_flops_per_pair * self.device.attention_weight * spf
        fixed = overhead + 2.0 * shape.hidden_size * shape.vocab_size * spf
        end = prompt_tokens * (prompt_tokens + 1)
        full = fixed + per_token * prompt_tokens + per_pair * end
        params: dict[str, tuple[float, float]] = {}
        best_k, best_ttft, best_load, best_rec = 0, full, 0.0, full
        load = 0.0
        for k in range(1, run + 1):
            name = chunk_tiers[k - 1]
            p = params.get(name)  # type: ignore[arg-type]
            if p is None:
                p = self.tier(name).params()  # type: ignore[arg-type]
                params[name] = p  # type: ignore[index]
                load += p[0]  # first chunk from this tier: its latency, once
            load += chunk_bytes * p[1]
            s = k * chunk_tokens
            if s > last:
                s = last
            rec = fixed + per_token * (prompt_tokens - s) + per_pair * (end - s * (s + 1))
            if load + rec < best_ttft:
                best_k, best_ttft, best_load, best_rec = k, load + rec, load, rec
        loads = self._tier_loads(chunk_tiers, best_k, chunk_bytes, params)
        return Plan(prompt_tokens, chunk_tokens, run, best_k, best_k * chunk_tokens,
                    min(best_k * chunk_tokens, last) if best_k else 0,
                    best_load, best_rec, best_ttft, full, loads)

    def _tier_loads(self, chunk_tiers: Sequence[str | None], k: int, chunk_bytes: int,
                    params: dict[str, tuple[float, float]] | None = None) -> tuple[TierLoad, ...]:
        """Per-tier breakdown of loading chunks [0, k); `params` caches tier snapshots already read."""
        params = {} if params is None else params
        counts: dict[str, int] = {}
        for i in range(k):
            name = chunk_tiers[i]
            counts[name] = counts.get(name, 0) + 1  # type: ignore[index]
        out = []
        for name, c in counts.items():
            lat, spb = params.get(name) or self.tier(name).params()
            out.append(TierLoad(name, c, c * chunk_bytes, lat + c * chunk_bytes * spb))
        return tuple(out)

    def break_even_tokens(self, tier: str, bytes_per_token: float, max_tokens: int | None = None) -> int | None:
        """Smallest prefix length p (tokens) whose load from `tier` beats recomputing it.

        Compares latency + p·bytes_per_token/bandwidth with the marginal prefill time of p
        tokens, FLOPs(p)/throughput without LM head and per-prefill overhead (both paths run a
        prefill of the rest anyway). The gain is convex in p and negative at 0, so past the
        break-even loading stays ahead; solved in closed form. None if beyond `max_tokens`
        (default: the model's context length, else 131072) or the device is unknown.
        """
        t = self.tier(tier)
        bpt = finite("bytes_per_token", bytes_per_token, positive=True)
        limit = max_tokens or self.shape.max_position_embeddings or DEFAULT_MAX_TOKENS
        if not self.device.known:
            return None
        lat, spb = t.params()
        spf = self.device.params()[1]
        l, w = self.shape.num_layers, self.device.attention_weight
        qa = spf * l * self.shape.attention_flops_per_pair * w
        qb = spf * l * (self.shape.linear_flops_per_token + self.shape.attention_flops_per_pair * w) - bpt * spb
        root = (-qb + math.sqrt(qb * qb + 4.0 * qa * lat)) / (2.0 * qa)  # larger root of qa·p² + qb·p − lat
        p = max(1, math.floor(root) - 1)

        def gain(x: int) -> float:
            return spf * self.shape.body_flops(x, attention_weight=w) - (lat + x * bpt * spb)

        while p > 1 and gain(p - 1) > 0:  # guard float error around the root
            p -= 1
        while gain(p) <= 0 and p <= limit:
            p += 1
        return p if p <= limit else None

    def admit(self, tier: str, chunk_tokens: int, chunk_bytes: int, position: int) -> bool:
        """Admission rule: may a chunk covering tokens [position, position+chunk_tokens) go to `tier`?

        Yes iff its best-case reload beats recomputing it: chunk_bytes / bandwidth (latency
        amortised away, as in a large batched load — the most favourable case for loading, hence
        "can never beat" when even this loses) < FLOPs(position → position+chunk_tokens) /
        throughput (its prefill given its prefix, attention over the prefix included). The right
        side grows with position, so a chunk deep in a prompt is admitted where an early one
        is not; `min_admit_position` gives the threshold. Unknown device: admitted (nothing
        proves it can never pay).
        """
        positive_int("admit", "chunk_tokens", chunk_tokens)
        positive_int("admit", "chunk_bytes", chunk_bytes)
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise InvalidArgumentError(f"admit position {position!r}: must be a token index >= 0")
        if not self.device.known:
            return True
        reload = chunk_bytes * self.tier(tier).params()[1]
        recompute = self.device.compute_seconds(self.shape.body_flops(position + chunk_tokens, position,
                                                                      self.device.attention_weight))
        return reload < recompute

    def min_admit_position(self, tier: str, chunk_tokens: int, chunk_bytes: int,
                           max_tokens: int | None = None) -> int | None:
        """Smallest token position at which `admit` says yes (None past `max_tokens`)."""
        limit = max_tokens or self.shape.max_position_embeddings or DEFAULT_MAX_TOKENS
        if not self.device.known:
            return 0
        spb = self.tier(tier).params()[1]
        spf = self.device.params()[1]
        l, c = self.shape.num_layers, chunk_tokens
        att, lin = self.shape.attention_flops_per_pair * self.device.attention_weight, self.shape.linear_flops_per_token
        # body(s, s+c) = l·(lin·c + att·(c² + c) + 2·att·c·s), linear in s
        need = chunk_bytes * spb / (spf * l)
        s = max(0, math.floor((need - lin * c - att * (c * c + c)) / (2 * att * c)) - 1)
        while s > 0 and self.admit(tier, chunk_tokens, chunk_bytes, s - 1):
            s -= 1
        while s <= limit and not self.admit(tier, chunk_tokens, chunk_bytes, s):
            s += 1
        return s if s <= limit else None

    # -- wire form ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape.to_dict(), "device": self.device.to_dict(),
                "tiers": {name: t.to_dict() for name, t in self.tiers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CostModel":
        if not isinstance(data, Mapping) or "shape" not in data:
            raise InvalidArgumentError(f"cost model {shown(data)}: needs 'shape', 'device' and 'tiers'")
        dev = DeviceThroughput.from_dict(data.get("device"))
        return cls(ModelShape.from_dict(data["shape"]), dev,
                   [TierCost.from_dict(t) for t in (data.get("tiers") or {}).values()])
