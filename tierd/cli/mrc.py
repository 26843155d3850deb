"""`tierd mrc`: the LRU hit-rate curve (hit ratio vs capacity) of a workload, and offline, how
far it is from the best any eviction policy could do (`--opt`) and what each policy gets
(`--policy`).

Offline mode reads a trace (Mooncake JSONL or tierd's Parquet access trace) and prints the
exact curve beside its SHARDS estimates, block-level and prefix-level. The work lives in
`tierd.mrc.trace_report.analyze`; this module only parses flags and prints, so the live mode
(curves fetched from a running daemon over --socket) can reuse the same report and printing:
see `_run_live`.

JSON contract (`--json`), relied on by scripts: one object with `exact`, `shards`,
`prefix_exact`, `prefix_shards`, each a list of [capacity_in_blocks, hit_ratio] pairs, plus
`grid`, counts, `mae_vs_exact`, and with --block-bytes `grid_bytes`, `tiers`, `recommendation`.
With --opt: `opt` (Belady's MIN, prefix-level, the grid) and `opt_block` (block-level). With
--policy: `policy_grid` and `policies: {name: [[capacity_in_blocks, prefix_hit_ratio], ...]}`.
"""
from __future__ import annotations

import argparse
from typing import Any

from tierd.cli.common import add_client_args, print_json, print_table
from tierd.errors import ConfigError, InvalidArgumentError
from tierd.mrc.advice import GiB
from tierd.mrc.sampling import sampling_threshold
from tierd.mrc.trace_report import DEFAULT_POLICY_POINTS, analyze
from tierd.mrc.traces import TRACE_FORMATS, read_trace
from tierd.policies import POLICIES, make_policy
from tierd.sizes import format_size, parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mrc",
        help="hit-rate curve: LRU hit ratio vs capacity, exact and sampled (SHARDS)",
        description="Hit ratio vs capacity for a trace: exact LRU stack distances beside SHARDS "
                    "estimates, block-level and prefix-level (a chunk only counts when its whole prefix hits).",
    )
    p.add_argument("--trace", default=None, help="trace file to analyse offline")
    p.add_argument("--format", default="mooncake", help=f"trace format: {' or '.join(TRACE_FORMATS)} (default mooncake)")
    p.add_argument("--sample-rate", default="0.01", help="SHARDS sampling rate in (0, 1] (default 0.01)")
    p.add_argument("--fixed-size", default=None, help="also run fixed-size SHARDS tracking at most this many keys")
    p.add_argument("--grid", default=None,
                   help="capacities in blocks: 'A,B,C' or 'START:STOP:STEP' (default: 40 even steps up to the distinct keys)")
    p.add_argument("--block-bytes", default=None,
                   help="bytes per block (e.g. 64MiB); needed for byte capacities (parquet traces: taken from the trace when uniform)")
    p.add_argument("--tier-capacity", action="append", default=[], metavar="NAME=SIZE",
                   help="a tier's capacity, e.g. dram=64GiB; repeat in tier order (capacities add up)")
    p.add_argument("--gain-per-gib", default=None,
                   help="recommend the capacity past which one more GiB adds less than this to the hit ratio (default 0.001)")
    p.add_argument("--ops", default="lookup", help="parquet traces: which ops to replay, comma-separated (default lookup)")
    p.add_argument("--opt", action="store_true",
                   help="offline: add Belady's optimum (MIN, evict the block used furthest in the future), "
                        "the best any eviction policy could do, on the whole grid")
    p.add_argument("--policy", default=None, metavar="NAMES",
                   help=f"offline: simulate these eviction policies, comma-separated or 'all' ({', '.join(POLICIES)}); "
                        "prefix-level, at --policy-points capacities of the grid")
    p.add_argument("--policy-points", default=str(DEFAULT_POLICY_POINTS), metavar="N",
                   help=f"capacities each --policy is simulated at, evenly picked from the grid (default "
                        f"{DEFAULT_POLICY_POINTS}: one simulation is a pass over the trace, about 0.3-1 s per "
                        "policy and capacity on a 300k-reference trace)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a plot of the curves to this PNG file")
    add_client_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.trace is None:
        return _run_live(args)
    report = _offline_report(args)
    _output(report, args)
    return 0


def _run_live(args: argparse.Namespace) -> int:
    """Live mode: the daemon's online SHARDS curves (fixed size, over its real lookups), with
    its tier capacities marked and each tier's predicted and measured hit ratio. The curve is
    LRU's whatever each tier evicts with (stack distances model LRU only): each tier's policy
    is taken from `stat` so the printout says so where a tier is not LRU."""
    from tierd.cli.common import connect

    if args.opt or args.policy is not None:
        flag = "--opt" if args.opt else "--policy"
        raise InvalidArgumentError(f"{flag} needs --trace: the optimum and the simulated policies replay a trace "
                                   "offline (a live daemon only reports its own policy's curve)")
    request: dict[str, Any] = {}
    if args.grid is not None:
        request["grid"] = [int(c) for c in _parse_grid(args.grid)]
    if args.gain_per_gib is not None:
        request["gain_per_gib"] = _number(args.gain_per_gib, "--gain-per-gib", "a positive number, e.g. 0.001")
    with connect(args) as client:
        report = client._call("mrc", **request)
        policies = {t.get("name"): t.get("policy") for t in client.stat().get("tiers", [])}
    for tier in report.get("tiers", []):
        tier.setdefault("policy", policies.get(tier.get("name")))
    _output(report, args)
    return 0


def _offline_report(args: argparse.Namespace) -> dict[str, Any]:
    rate = _number(args.sample_rate, "--sample-rate", "a rate in (0, 1], e.g. 0.01")
    sampling_threshold(rate)  # bad rates fail before the trace is read
    fixed_size = None
    if args.fixed_size is not None:
        fixed_size = _number(args.fixed_size, "--fixed-size", "a positive whole number of keys, e.g. 4096")
        if not float(fixed_size).is_integer() or fixed_size < 1:
            raise InvalidArgumentError(f"--fixed-size {args.fixed_size!r}: use a positive whole number of keys, e.g. 4096")
        fixed_size = int(fixed_size)
    grid = _parse_grid(args.grid) if args.grid is not None else None
    block_bytes = parse_size(args.block_bytes, key="--block-bytes") if args.block_bytes is not None else None
    if block_bytes == 0:
        raise ConfigError("--block-bytes 0: give the bytes of one KV block, e.g. 64MiB")
    tiers = [_parse_tier(t) for t in args.tier_capacity]
    gain = _number(args.gain_per_gib, "--gain-per-gib", "a fraction per GiB, e.g. 0.001") if args.gain_per_gib is not None else None
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    policies = _parse_policies(args.policy) if args.policy is not None else []
    points = _number(args.policy_points, "--policy-points", "a positive whole number, e.g. 10")
    if not float(points).is_integer() or points < 1:
        raise InvalidArgumentError(f"--policy-points {args.policy_points!r}: use a positive whole number, e.g. 10")
    requests = list(read_trace(args.trace, args.format, ops=ops))
    if block_bytes is None and args.format == "parquet":
        sizes = {s for r in requests for s in r.sizes}
        if len(sizes) == 1 and next(iter(sizes)) > 0:
            block_bytes = next(iter(sizes))
    report = analyze(requests, sample_rate=rate, grid=grid, fixed_size=fixed_size, block_bytes=block_bytes,
                     gain_per_gib=gain, tier_capacities=tiers, opt=args.opt, policies=policies,
                     policy_points=int(points))
    report["trace"] = str(args.trace)
    report["format"] = args.format
    return report


def _number(text: str, flag: str, hint: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{flag} {text!r}: use {hint}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgumentError(f"{flag} {text!r}: use {hint}")
    return value


def _parse_grid(text: str) -> list[float]:
    hint = "use 'A,B,C' or 'START:STOP:STEP' with positive numbers of blocks, e.g. 1000:60000:1000"
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or start <= 0 or stop < start or (stop - start) / step > 100_000:
                raise ValueError
            count = int((stop - start) / step + 1e-9) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--grid {text!r}: {hint}") from None
    if not values or min(values) <= 0:
        raise InvalidArgumentError(f"--grid {text!r}: {hint}")
    return values


def _parse_policies(text: str) -> list[str]:
    """'all' or comma-separated registered names, each once, in the order given."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(POLICIES)
    if not names:
        raise InvalidArgumentError(f"--policy {text!r}: name policies, e.g. lru,arc, or 'all' ({', '.join(POLICIES)})")
    for name in names:
        try:
            make_policy(name)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"--policy: {exc}") from None
    return list(dict.fromkeys(names))


def _parse_tier(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--tier-capacity {text!r}: use NAME=SIZE, e.g. dram=64GiB")
    return name.strip(), parse_size(size.strip(), key=f"--tier-capacity {name.strip()}")


def _output(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.plot:
        _plot(report, args.plot)
    if args.json:
        print_json(report)
    else:
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    curves = ("exact", "shards", "prefix_exact", "prefix_shards", "shards_fixed_size", "prefix_shards_fixed_size",
              "opt_block", "opt")
    names = [n for n in curves if n in report]
    simulated = {name: dict((c, h) for c, h in curve) for name, curve in report.get("policies", {}).items()}
    block_bytes = report.get("block_bytes")
    headers = ["capacity_blocks"] + (["capacity"] if block_bytes else []) + names + list(simulated)
    rows = []
    for i, cap in enumerate(report["grid"]):
        row: list[Any] = [cap] + ([format_size(int(cap * block_bytes))] if block_bytes else [])
        row += [f"{report[n][i][1]:.4f}" for n in names]
        row += [f"{curve[cap]:.4f}" if cap in curve else "-" for curve in simulated.values()]
        rows.append(row)
    print_table(headers, rows)
    print()
    print(f"trace {report.get('trace', '-')}: {report['requests']} requests, {report['references']} chunk references, "
          f"{report['distinct']} distinct (hit ratio at most {report['max_hit_ratio']:.4f})")
    print(f"SHARDS rate {report['sample_rate']}: {report['sampled_references']} references sampled; mean abs error vs exact: "
          + ", ".join(f"{k} {v:.4f}" for k, v in report["mae_vs_exact"].items()))
    for tier in report.get("tiers", []):
        print(f"tier {tier['name']} ({format_size(tier['bytes'])}, cumulative {format_size(tier['cumulative_bytes'])}"
              f" = {tier['cumulative_blocks']} blocks): hit ratio {tier['hit_ratio']:.4f}, prefix {tier['prefix_hit_ratio']:.4f}")
    others = [f"{t['name']} evicts with {t['policy']}" for t in report.get("tiers", []) if t.get("policy") not in (None, "lru")]
    if others:
        print(f"note: the curve is LRU's (stack distances over the lookups) whatever the tiers evict with; {', '.join(others)}, "
              "so the measured hit ratio (tierd stat) is that policy's, and the gap to the curve is the policy's gain or loss")
    if "opt" in report:
        print("opt: Belady's optimum (MIN, evicts the block used furthest in the future), prefix-level like prefix_exact; "
              "opt_block is its block-level ratio, which no policy exceeds at either level")
        shares = [(lru / best, cap) for (cap, lru), (_, best) in zip(report["prefix_exact"], report["opt"]) if best > 0]
        if shares:
            low = min(shares)
            print(f"LRU reaches {low[0]:.2f} to {max(shares)[0]:.2f} of the optimum's prefix hit ratio over the grid "
                  f"(least at {low[1]} blocks)")
    if simulated:
        print(f"policies ({', '.join(simulated)}): prefix hit ratio simulated at {len(report['policy_grid'])} capacities "
              "of the grid (--policy-points); '-' where not simulated")
    rec = report.get("recommendation")
    if rec:
        more = "" if rec["flattened"] else " (still rising at the end of the grid: try a larger grid)"
        print(f"recommended capacity: {format_size(int(rec['capacity_bytes']))} ({rec['capacity_blocks']} blocks, hit ratio "
              f"{rec['hit_ratio']:.4f}); beyond it one more GiB adds less than {rec['gain_per_gib']}{more}")


def _plot(report: dict[str, Any], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'tierd[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"exact": "-", "shards": "--", "prefix_exact": "-", "prefix_shards": "--",
              "shards_fixed_size": ":", "prefix_shards_fixed_size": ":"}
    for name, style in styles.items():
        if name in report:
            xs = [c for c, _ in report[name]]
            ys = [h for _, h in report[name]]
            ax.plot(xs, ys, style, label=name, linewidth=2 if name.endswith("exact") else 1.2)
    if "opt" in report:
        xs = [c for c, _ in report["opt"]]
        ax.plot(xs, [h for _, h in report["opt"]], "-", color="black", linewidth=2.2, label="opt (Belady MIN, prefix)")
        if any(abs(a[1] - b[1]) > 1e-4 for a, b in zip(report["opt"], report["opt_block"])):
            ax.plot(xs, [h for _, h in report["opt_block"]], ":", color="black", linewidth=1.2, label="opt_block")
        ax.fill_between(xs, [h for _, h in report["prefix_exact"]], [h for _, h in report["opt"]], color="grey",
                        alpha=0.15, label="LRU to opt (prefix)")
    for name, curve in report.get("policies", {}).items():
        ax.plot([c for c, _ in curve], [h for _, h in curve], "-", marker="o", markersize=3, linewidth=1.2,
                label=f"policy {name} (prefix, simulated)")
    for tier in report.get("tiers", []):
        ax.axvline(tier["cumulative_blocks"], color="grey", linestyle="-.", linewidth=1)
        ax.annotate(tier["name"], (tier["cumulative_blocks"], 0.02), rotation=90, fontsize=8, color="grey")
    rec = report.get("recommendation")
    if rec:
        ax.axvline(rec["capacity_blocks"], color="green", linestyle=":", linewidth=1, label="recommended")
    block_bytes = report.get("block_bytes")
    if block_bytes:
        gib = block_bytes / GiB
        top = ax.secondary_xaxis("top", functions=(lambda b: b * gib, lambda g: g / gib))
        top.set_xlabel("capacity (GiB)")
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("hit ratio")
    ax.set_ylim(0, max(0.05, report["max_hit_ratio"] * 1.1))
    what = "LRU hit-rate curve" if "opt" not in report and "policies" not in report else "Hit-rate curves (LRU, policies, optimum)"
    ax.set_title(f"{what}, SHARDS rate {report['sample_rate']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise InvalidArgumentError(f"--plot {path!r}: cannot write ({exc}); check the directory") from None
    finally:
        plt.close(fig)
