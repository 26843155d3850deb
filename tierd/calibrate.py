"""Start-up calibration of a tier: measure its read latency and bandwidth in well under a second.

The cost model needs a tier's (latency, bandwidth) before the first real transfer has been
seen; declared values are guesses, a measurement on this machine is not. A read of n bytes
takes latency + n / bandwidth, so two sizes suffice: a small one (64 KiB, dominated by
latency) and a large one (4 MiB, dominated by bandwidth). Each is timed a few times and the
fastest time kept (interference from other work only ever adds time), then the line through
the two points gives both parameters. `TierCost.observe` refines them online afterwards.

What is timed is `read_fn` — the load direction the cost model predicts. `write_fn` puts the
bytes in place first and is not timed. Both block; the daemon runs this before serving (or in
a worker thread), never on its event loop.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np

from tierd.costmodel import TierCost
from tierd.errors import InvalidArgumentError

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * 1024

#: Write `buf` (a memoryview of the calibration bytes) where `read_fn` will find it.
WriteFn = Callable[[memoryview], Any]
#: Read back `nbytes` of what was last written (blocking; the return value is ignored).
ReadFn = Callable[[int], Any]


def calibrate_tier(
    write_fn: WriteFn,
    read_fn: ReadFn,
    sizes: tuple[int, int] = (64 * KiB, 4 * MiB),
    repeats: int = 5,
    *,
    name: str = "tier",
    budget_s: float = 0.5,
    clock: Callable[[], float] = time.perf_counter,
) -> TierCost:
    """Measure a tier's read latency and bandwidth; returns a `TierCost` seeded with them.

    For each of the two `sizes` (small first), writes random bytes with `write_fn` and times up
    to `repeats` reads with `read_fn`, keeping the minimum. Rounds alternate the sizes and stop
    once `budget_s` of reading is spent, after at least one timed read of each size — so the
    total is about budget_s plus one write and one read of each size (a tier too slow for that
    still gets its one measurement per size). Fit, from the minima (s1, t1) and (s2, t2):

        seconds_per_byte = (t2 − t1) / (s2 − s1),  latency = t1 − s1 · seconds_per_byte

    Noise can bend that line: if the large read was not slower per byte than the small one
    would allow (slope <= 0) the bandwidth is taken as s2 / t2 and the latency as what is left
    of t1; a negative latency is clamped to 0 with the line through the origin and (s2, t2).
    """
    s1, s2 = _check_sizes(sizes)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"calibration repeats {repeats!r}: must be an integer >= 1")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise InvalidArgumentError(f"calibration budget_s {budget_s!r}: must be a positive number of seconds")

    data = np.random.default_rng(0x7_1E_2D).integers(0, 256, s2, dtype=np.uint8)  # incompressible
    best = {s1: math.inf, s2: math.inf}
    spent = 0.0
    for s in (s1, s2):
        write_fn(memoryview(data[:s]).cast("B"))
        t0 = clock()
        read_fn(s)  # warm-up: first touch, page cache, connection set-up
        spent += clock() - t0
    for round_ in range(repeats):
        for s in (s1, s2):
            write_fn(memoryview(data[:s]).cast("B"))
            t0 = clock()
            read_fn(s)
            elapsed = clock() - t0
            spent += elapsed
            best[s] = min(best[s], elapsed)
        if spent >= budget_s:
            break

    t1, t2 = best[s1], best[s2]
    bandwidth, latency = solve_line(s1, t1, s2, t2)
    log.info("calibrated tier %s: %.3g B/s, latency %.3g s (min of %d rounds: %d B in %.3g s, %d B in %.3g s)",
             name, bandwidth, latency, round_ + 1, s1, t1, s2, t2)
    return TierCost(name, bandwidth, latency)


def solve_line(s1: int, t1: float, s2: int, t2: float) -> tuple[float, float]:
    """(bandwidth B/s, latency s) of the line through (s1, t1) and (s2, t2), s1 < s2, kept physical."""
    tiny = 1e-9  # a read that timed at 0 s (clock resolution) counts as 1 ns
    t1, t2 = max(t1, tiny), max(t2, tiny)
    slope = (t2 - t1) / (s2 - s1)
    if slope <= 0:  # large read not slower than the small one: noise or caching; bound from the large one
        bandwidth = s2 / t2
        return bandwidth, max(0.0, t1 - s1 / bandwidth)
    latency = t1 - s1 * slope
    if latency < 0:
        return s2 / t2, 0.0
    return 1.0 / slope, latency


def _check_sizes(sizes: Any) -> tuple[int, int]:
    try:
        s1, s2 = sizes
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"calibration sizes {sizes!r}: give two byte sizes, small then large") from None
    for s in (s1, s2):
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
            raise InvalidArgumentError(f"calibration size {s!r}: must be a positive number of bytes")
    if s1 >= s2:
        raise InvalidArgumentError(
            f"calibration sizes {sizes!r}: the first must be smaller than the second (e.g. 64 KiB and 4 MiB)"
        )
    return s1, s2
