"""The online line fit that tier costs and device throughput both learn with.

A transfer's time is latency + bytes/bandwidth and a prefill's time is overhead +
FLOPs/throughput: both are a line y = a + b·x, refined from each real observation. One
implementation serves both (`tiers.TierCost`, `device.DeviceThroughput`).
"""
from __future__ import annotations

from tierd.errors import InvalidArgumentError

#: Observations a prior-less fit takes before it starts clipping outliers against itself.
_CLIP_AFTER = 8


class ForgettingLinearFit:
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
