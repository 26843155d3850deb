"""Weighted distances in a bounded number of buckets: the state a SHARDS estimator keeps.

Sampled distances are scaled by 1/R and weighted by the references each sample stands for,
so the estimators keep a histogram rather than the distances themselves; its memory stays
bounded however long the daemon runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tierd.mrc.curve import Curve, check_grid, hit_ratios, make_curve

# Bucket indices are ceil(distance / width); scaled distances such as 3 * (P / T) come out a
# hair above a whole number of blocks, and must not fall into the next bucket.
_BUCKET_SLACK = 1e-9


@dataclass(slots=True)
class DistanceHistogram:
    """Weighted distances in buckets of `width` (bucket i holds distances in ((i-1)w, iw]).

    Memory stays bounded: past `max_buckets` buckets the width doubles and neighbours merge.
    A bucket counts as a hit at capacity C only when its upper edge is <= C, so coarsening can
    only understate the hit ratio, by at most one bucket's width of capacity.
    """

    width: float
    max_buckets: int = 1 << 15
    buckets: dict[int, float] = field(default_factory=dict)
    cold: float = 0.0
    sampled: float = 0.0  # total weight added, cold included

    def add(self, distance: float, weight: float) -> None:
        self.sampled += weight
        if distance == math.inf:
            self.cold += weight
            return
        i = max(1, math.ceil(distance / self.width - _BUCKET_SLACK))
        self.buckets[i] = self.buckets.get(i, 0.0) + weight
        if len(self.buckets) > self.max_buckets:
            self._coarsen()

    def add_many(self, distances: np.ndarray, weight: float) -> None:
        finite = np.isfinite(distances)
        self.cold += weight * float(np.count_nonzero(~finite))
        self.sampled += weight * float(len(distances))
        idx = np.maximum(1, np.ceil(distances[finite] / self.width - _BUCKET_SLACK)).astype(np.int64)
        values, counts = np.unique(idx, return_counts=True)
        for i, c in zip(values.tolist(), counts.tolist()):
            self.buckets[i] = self.buckets.get(i, 0.0) + weight * c
        while len(self.buckets) > self.max_buckets:
            self._coarsen()

    def _coarsen(self) -> None:
        merged: dict[int, float] = {}
        for i, w in self.buckets.items():
            j = (i + 1) // 2
            merged[j] = merged.get(j, 0.0) + w
        self.buckets = merged
        self.width *= 2

    def curve(self, grid: Sequence[float] | np.ndarray, *, references: int, adjust: bool) -> Curve:
        """Hit ratio per capacity; with `adjust`, SHARDS-adj puts the gap between the true
        reference count and the sampled weight into the first bucket."""
        caps = check_grid(grid)
        if references <= 0 or self.sampled <= 0:
            return make_curve(caps, np.zeros(len(caps)))
        idx = np.fromiter(self.buckets.keys(), dtype=np.float64, count=len(self.buckets))
        w = np.fromiter(self.buckets.values(), dtype=np.float64, count=len(self.buckets))
        if adjust:
            idx = np.r_[1.0, idx]
            w = np.r_[references - self.sampled, w]
            total = float(references)
        else:
            total = self.sampled
        return make_curve(caps, hit_ratios(idx * self.width, caps, weights=w, total=total))
