"""Advice from a curve: the capacity past which one more GiB stops paying for itself.

A hit-rate curve flattens: past some capacity, each further GiB of DRAM or NVMe buys a
smaller rise in the hit ratio. The operator names the least rise worth a GiB; the advice is
where the curve falls below it for good.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tierd.errors import InvalidArgumentError
from tierd.mrc.curve import Curve

GiB = 1 << 30


@dataclass(slots=True, frozen=True)
class Recommendation:
    """Where the hit-rate curve stops paying: past `capacity` bytes, every further GiB adds
    less than `gain_per_gib` to the hit ratio (on the grid given). `flattened` is False when
    the curve still pays at the largest capacity of the grid: measure further out."""

    capacity: float
    hit_ratio: float
    gain_per_gib: float
    flattened: bool

    def to_dict(self) -> dict[str, Any]:
        return {"capacity_bytes": self.capacity, "hit_ratio": self.hit_ratio, "gain_per_gib": self.gain_per_gib,
                "flattened": self.flattened}


def recommend_capacity(curve: Curve, gain_per_gib: float) -> Recommendation:
    """The capacity beyond which one more GiB adds less than `gain_per_gib` to the hit ratio.

    `curve` has byte capacities. The answer is the end of the last grid segment whose slope
    is at least the threshold (the start of the grid if none is), so a plateau followed by a
    second rise (LRU curves have cliffs) is not mistaken for the end.
    """
    if isinstance(gain_per_gib, bool) or not isinstance(gain_per_gib, (int, float)) or not gain_per_gib > 0 \
            or not math.isfinite(gain_per_gib):
        raise InvalidArgumentError(f"gain per GiB {gain_per_gib!r}: use a positive fraction, e.g. 0.001 (0.1% per GiB)")
    points = sorted((float(c), float(h)) for c, h in curve)
    if not points:
        raise InvalidArgumentError("empty curve: evaluate the curve on at least one capacity")
    best = 0
    for i in range(1, len(points)):
        (c0, h0), (c1, h1) = points[i - 1], points[i]
        if c1 > c0 and (h1 - h0) / ((c1 - c0) / GiB) >= gain_per_gib:
            best = i
    flattened = best < len(points) - 1 or len(points) == 1
    return Recommendation(capacity=points[best][0], hit_ratio=points[best][1], gain_per_gib=float(gain_per_gib),
                          flattened=flattened)


def recommend_blocks(curve: Curve, block_bytes: int, gain_per_gib: float) -> dict[str, Any]:
    """`recommend_capacity` for a curve whose capacities are blocks of `block_bytes` each, in
    the JSON shape `tierd mrc` prints (bytes, and the same capacity in blocks)."""
    by_bytes = [[c * block_bytes, h] for c, h in curve]
    rec = recommend_capacity(by_bytes, gain_per_gib).to_dict()
    rec["capacity_blocks"] = int(rec["capacity_bytes"] // block_bytes)
    return rec
