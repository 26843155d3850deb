"""Hit-rate curve estimators: references per second on the Mooncake conversation trace.

Each estimator runs over the same 288,500 block references (12,031 requests) in the same run:

    dict_pass          a plain Python loop storing each reference in a dict: the cost of just
                       touching every key once per reference, the floor for any online tracker
    exact_offline      tierd.mrc.exact.stack_distances + hit_ratios (numpy, whole trace at once)
    exact_online       ShardsMRC at rate 1.0: Fenwick-tree Mattson, one access_request per request
    shards_online      ShardsMRC.fixed_rate(0.01)
    shards_fixed_size  ShardsMRC.fixed_size(4096)
    shards_offline     shards_fixed_rate_curves at 0.01 (numpy)

Figures: exact_offline and exact_online against dict_pass; the SHARDS estimators against the
exact estimator of the same kind (online or offline), so their ratio is the speedup that
sampling buys. Rounds interleave the estimators and each figure is the median round; the accuracy (mean absolute error vs
exact over 1k..60k blocks in 1k steps) is printed too, as a check that the speed is not bought
with wrong answers.

    python -m bench.mrc_throughput [--quick] [--rounds 5] [--trace PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/mrc_throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierd.mrc.curve import hit_ratios, make_curve, mean_abs_error  # noqa: E402
from tierd.mrc.exact import stack_distances  # noqa: E402
from tierd.mrc.references import flatten_requests  # noqa: E402
from tierd.mrc.shards import ShardsMRC, shards_fixed_rate_curves  # noqa: E402
from tierd.mrc.traces import read_mooncake  # noqa: E402

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake" / "conversation_trace.jsonl"
GRID = list(range(1000, 60001, 1000))
RATE = 0.01
FIXED_SIZE = 4096


def _interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per run over `rounds` rounds, each round running every estimator once,
    so a noisy neighbour slows all of them alike; and each run's last result."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of --rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = parser.parse_args()
    rounds = 1 if args.quick else max(1, args.rounds)

    requests = [r.keys for r in read_mooncake(args.trace)]
    refs = flatten_requests(read_mooncake(args.trace))
    n = len(refs.sizes)

    def dict_pass() -> int:
        last: dict[int, int] = {}
        i = 0
        for keys in requests:
            for k in keys:
                last[k] = i
                i += 1
        return len(last)

    def exact_offline() -> list:
        return make_curve(GRID, hit_ratios(stack_distances(refs.keys), GRID))

    def online(make: Callable[[], ShardsMRC]) -> Callable[[], list]:
        def run() -> list:
            est = make()
            for keys in requests:
                est.access_request(keys)
            return est.curve(GRID)
        return run

    def shards_offline() -> list:
        return shards_fixed_rate_curves(refs, GRID, RATE)[0]

    runs = {
        "dict_pass": dict_pass,
        "exact_offline": exact_offline,
        "exact_online": online(lambda: ShardsMRC(1.0)),
        "shards_online": online(lambda: ShardsMRC.fixed_rate(RATE)),
        "shards_fixed_size": online(lambda: ShardsMRC.fixed_size(FIXED_SIZE)),
        "shards_offline": shards_offline,
    }
    seconds, curves = _interleaved(runs, rounds)
    rate = {name: n / s for name, s in seconds.items()}

    print(f"trace {args.trace}: {len(requests)} requests, {n} references; {rounds} round(s), median shown")
    exact = curves["exact_offline"]
    for name in ("exact_online", "shards_online", "shards_fixed_size", "shards_offline"):
        print(f"{name:18s} {rate[name] / 1e6:7.3f} M refs/s   MAE vs exact {mean_abs_error(curves[name], exact):.4f}")
    print(f"{'exact_offline':18s} {rate['exact_offline'] / 1e6:7.3f} M refs/s")
    print(f"{'dict_pass':18s} {rate['dict_pass'] / 1e6:7.3f} M refs/s")

    figures = [
        ("mrc_exact_offline", "exact_offline", "dict_pass"),
        ("mrc_exact_online", "exact_online", "dict_pass"),
        (f"mrc_shards_online_r{RATE}", "shards_online", "exact_online"),
        (f"mrc_shards_fixed_size_{FIXED_SIZE}", "shards_fixed_size", "exact_online"),
        (f"mrc_shards_offline_r{RATE}", "shards_offline", "exact_offline"),
    ]
    for fig, value, baseline in figures:
        print("FIGURE " + json.dumps({
            "name": fig, "value": round(rate[value] / 1e6, 4), "unit": "Mrefs/s", "baseline": baseline,
            "baseline_value": round(rate[baseline] / 1e6, 4), "ratio": round(rate[value] / rate[baseline], 3),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
