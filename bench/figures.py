"""The FIGURE line every benchmark prints (format in ../shared/CONVENTIONS.md) and the timing
helpers they share."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable


def figure(name: str, value: float, unit: str, baseline: str, baseline_value: float, *, higher_is_better: bool = True,
           **extra: object) -> dict[str, object]:
    """Print one FIGURE line. `ratio` is value/baseline for throughputs and baseline/value for
    times, so a higher ratio is always better."""
    ratio = value / baseline_value if higher_is_better else baseline_value / value
    fig = {"name": name, "value": round(value, 4), "unit": unit, "baseline": baseline,
           "baseline_value": round(baseline_value, 4), "ratio": round(ratio, 3), **extra}
    print("FIGURE " + json.dumps(fig), flush=True)
    return fig


def best_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` runs (noisy shared machines)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
