"""From distances to curves: the hit ratio at each capacity of a grid, and curve arithmetic.

A reference with stack distance d hits in every LRU cache of capacity >= d, so a curve is a
(weighted) cumulative count of distances evaluated on a grid of capacities.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError

#: A curve: [capacity, hit_ratio] pairs in increasing capacity order.
Curve = list[list[float]]


def hit_ratios(distances: np.ndarray, capacities: Sequence[float] | np.ndarray, *, weights: np.ndarray | None = None,
               total: float | None = None) -> np.ndarray:
    """Fraction of references with distance <= each capacity (weighted if `weights`)."""
    caps = np.asarray(capacities, dtype=np.float64)
    d = np.asarray(distances)
    if weights is None:
        denominator = float(len(d)) if total is None else float(total)
        hits = np.searchsorted(np.sort(d), caps, side="right").astype(np.float64)
    else:
        order = np.argsort(d, kind="stable")
        cum = np.r_[0.0, np.cumsum(np.asarray(weights, dtype=np.float64)[order])]
        hits = cum[np.searchsorted(d[order], caps, side="right")]
        denominator = float(cum[-1]) if total is None else float(total)
    if denominator <= 0:
        return np.zeros(len(caps))
    return np.clip(hits / denominator, 0.0, 1.0)


def make_curve(capacities: Sequence[float] | np.ndarray, ratios: Sequence[float] | np.ndarray) -> Curve:
    """[capacity, hit_ratio] pairs: capacities as ints where whole, ratios rounded to 1e-6."""
    out: Curve = []
    for c, h in zip(np.asarray(capacities).tolist(), np.asarray(ratios).tolist()):
        out.append([int(c) if float(c).is_integer() else float(c), round(float(h), 6)])
    return out


def check_grid(grid: Iterable[float]) -> np.ndarray:
    """A sorted, de-duplicated array of positive finite capacities."""
    try:
        caps = np.asarray(sorted(set(float(c) for c in grid)), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"grid {grid!r}: use positive numbers, e.g. 1000,2000,5000") from None
    if len(caps) == 0:
        raise InvalidArgumentError("empty capacity grid: give at least one positive capacity")
    if not np.all(np.isfinite(caps)) or caps[0] <= 0:
        raise InvalidArgumentError(f"grid {caps.tolist()!r}: capacities must be positive and finite")
    return caps


def default_grid(distinct: int, points: int = 40) -> list[int]:
    """Evenly spaced capacities with a round step (1, 2 or 5 times a power of ten) that reach
    the number of distinct keys, where every LRU curve has flattened."""
    distinct = max(1, int(distinct))
    raw = max(1.0, distinct / max(1, points))
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = max(1, math.ceil(distinct / step))
    return [int(step * i) for i in range(1, count + 1)]


def mean_abs_error(a: Curve, b: Curve) -> float:
    """Mean |hit_a - hit_b| over the capacities the two curves share."""
    hb = {float(c): h for c, h in b}
    diffs = [abs(h - hb[float(c)]) for c, h in a if float(c) in hb]
    if not diffs:
        raise InvalidArgumentError("the two curves share no capacity: evaluate them on the same grid")
    return float(np.mean(diffs))
