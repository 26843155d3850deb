"""The load side of the cost model: what reading a batch of bytes from one tier costs.

Each tier costs latency + bytes / bandwidth. The daemon starts every tier from `DECLARED`
(order-of-magnitude guesses), replaces them with start-up measurements (`cost.calibrate`),
and refines them from real promotions (`TierCost.observe`).
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

from tierd.cost.checks import finite
from tierd.cost.fit import ForgettingLinearFit
from tierd.errors import InvalidArgumentError, shown

#: Sizes at which a declared (bandwidth, latency) pair anchors a tier's online fit.
_TIER_PRIOR_SIZES = (64 * 1024, 64 * 1024 * 1024)

#: Smallest slope the fit may have: 1e-15 s/byte (1 PB/s). A zero slope would mean infinite
#: bandwidth and break every division downstream.
_MIN_SECONDS_PER_BYTE = 1e-15

#: Declared costs before any measurement: (bandwidth bytes/s, latency s). Order-of-magnitude
#: values for a shared-memory copy and a local NVMe read through the daemon.
DECLARED: dict[str, tuple[float, float]] = {"dram": (8e9, 20e-6), "nvme": (1.5e9, 300e-6), "object": (0.3e9, 20e-3)}


class TierCost:
    """Predicted read (load) time of one tier: latency + bytes / bandwidth.

    Starts from a declared or calibrated (bandwidth, latency) and follows real transfers through
    `observe(nbytes, seconds)`, an exponentially forgetting least-squares line fit (see
    `ForgettingLinearFit`): the intercept is the fixed latency, the slope 1/bandwidth. With
    alpha = 0.1 the estimate follows a change within a few tens of transfers.

    Thread-safe: `observe` may be called from I/O threads; `predict` reads one immutable tuple.
    """

    __slots__ = ("name", "_fit", "_lock", "_params")

    def __init__(self, name: str, bandwidth: float, latency: float = 0.0, *, alpha: float = 0.1,
                 prior_count: float | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"tier name {name!r}: give a non-empty name such as 'dram' or 'nvme'")
        bw = finite(f"tier {name!r} bandwidth", bandwidth, positive=True)
        lat = finite(f"tier {name!r} latency", latency)
        self.name = name
        self._lock = threading.Lock()
        self._fit = ForgettingLinearFit(
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
        nb = finite(f"tier {self.name!r} observed bytes", nbytes)
        s = finite(f"tier {self.name!r} observed seconds", seconds)
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


def declared_costs(tier_names: Iterable[str]) -> dict[str, TierCost]:
    """A `TierCost` per tier from `DECLARED` (1 GB/s and 1 ms for a tier it does not name)."""
    return {name: TierCost(name, *DECLARED.get(name, (1e9, 1e-3))) for name in tier_names}
