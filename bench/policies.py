"""Eviction policies and NVMe admission against Belady's optimum, by trace replay.

    python -m bench.policies [--quick] [--policies NAMES] [--admission-policies NAMES]
                             [--trace-dir DIR] [--agentic-seed N]

Three traces, one 512-token block per id, chained ids (an id names its whole prefix):

- `conversation` and `synthetic`: the Mooncake FAST'25 traces (../shared/data/traces/mooncake);
- `agentic`: `tierd.mrc.agentic` with its default spec and `--agentic-seed` (64 tool-calling
  sessions open at once, each turn re-reading its whole context and appending 1-3 blocks).

Part 1, eviction. At 4-5 capacities per trace, every policy registered in
`tierd.policies.POLICIES` is replayed through `tierd.mrc.simulate.simulate` (one tier, the store's
own policy classes driven as the store drives them), beside Belady's MIN
(`tierd.mrc.belady`). The figure is the prefix hit ratio (only the leading run of a request's
present chunks counts, as an engine can use it), as a ratio to LRU's in the same run and to
MIN's. MIN maximises block hits, and its block ratio bounds every policy's prefix ratio from
above; its own prefix ratio (the OPT column) is a ratio an offline policy reaches. The two agree
to 4 digits on the Mooncake traces and within 0.0003 on the agentic one (FIGURE lines carry
both), so the prefix-level optimum is pinned to that width.

Part 2, admission. DRAM over NVMe (`simulate_tiers`, NVMe `--nvme-factor` times DRAM), each
admission filter of `tierd.policies.admission.ADMISSIONS` (sized for the NVMe and DRAM of the
run, `make_admission`), for the policies in `--admission-policies` (both tiers the same policy):
NVMe chunks written per prefix hit, and the prefix hit ratio, each filter compared to `all`
(writing every chunk DRAM evicts), and the issue's target per filter: writes per hit at most
half of `all`'s with at most 0.01 less prefix hit ratio.

Every figure is printed as a FIGURE line at the end, after the markdown tables (the tables are
what bench/README.md shows). `--quick` runs 2 capacities per trace and LRU only for admission.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # `python bench/policies.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from tierd.mrc.agentic import AgenticSpec, agentic_requests  # noqa: E402
from tierd.mrc.belady import belady  # noqa: E402
from tierd.mrc.simulate import simulate, simulate_tiers  # noqa: E402
from tierd.mrc.traces import read_mooncake  # noqa: E402
from tierd.policies import DEFAULT_POLICY, POLICIES, make_policy  # noqa: E402
from tierd.policies.admission import ADMISSIONS, make_admission  # noqa: E402

TRACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"

#: Capacities (blocks) per trace: full run, --quick.
CAPACITIES = {
    "conversation": ([2000, 5000, 10000, 20000, 40000], [5000, 20000]),
    "synthetic": ([2000, 5000, 10000, 20000, 40000], [5000, 10000]),
    "agentic": ([250, 500, 750, 1000, 1500], [500, 1000]),
}


@dataclass(slots=True)
class Row:
    """One trace at one capacity: MIN and each policy's prefix hit ratio."""

    trace: str
    capacity: int
    opt: float
    opt_block: float
    policies: dict[str, float]


@dataclass(slots=True)
class AdmissionRow:
    trace: str
    capacity: int
    policy: str
    #: admission name -> (prefix hit ratio, NVMe chunks written, prefix hits)
    runs: dict[str, tuple[float, int, int]]


def load_traces(trace_dir: Path, agentic_seed: int) -> dict[str, list[list[Any]]]:
    traces = {name: [r.keys for r in read_mooncake(trace_dir / f"{name}_trace.jsonl")]
              for name in ("conversation", "synthetic")}
    traces["agentic"] = [list(r.hash_ids) for r in agentic_requests(AgenticSpec(), agentic_seed)]
    return traces


def eviction_rows(name: str, requests: list[list[Any]], caps: list[int], policies: list[str]) -> list[Row]:
    rows = []
    for result in belady(requests, caps):
        ratios = {p: simulate(requests, make_policy(p), result.capacity).prefix_hit_ratio for p in policies}
        rows.append(Row(name, result.capacity, result.prefix_hit_ratio, result.block_hit_ratio, ratios))
    return rows


def admission_rows(name: str, requests: list[list[Any]], caps: list[int], policies: list[str],
                   nvme_factor: int) -> list[AdmissionRow]:
    rows = []
    for cap in caps:
        for policy in policies:
            runs = {}
            for admission in ADMISSIONS:
                r = simulate_tiers(requests, make_policy(policy), cap, make_policy(policy), cap * nvme_factor,
                                   make_admission(admission, cap * nvme_factor, cap))
                runs[admission] = (r.prefix_hit_ratio, r.lower_writes, r.prefix_hits)
            rows.append(AdmissionRow(name, cap, policy, runs))
    return rows


def print_eviction_table(rows: list[Row], policies: list[str]) -> None:
    print("| trace | capacity | OPT | " + " | ".join(policies) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in policies) + " |")
    for r in rows:
        lru = r.policies.get("lru")
        cells = []
        for p in policies:
            v = r.policies[p]
            vs_lru = f" ({v / lru:.2f}x LRU)" if lru and p != "lru" else ""
            cells.append(f"{v:.3f}{vs_lru}, {v / r.opt:.2f} OPT" if r.opt else f"{v:.3f}{vs_lru}")
        print(f"| {r.trace} | {r.capacity:,} | {r.opt:.3f} | " + " | ".join(cells) + " |")


def print_target_table(rows: list[Row], policies: list[str]) -> None:
    """Issue 22's targets per policy: never more than 0.01 below LRU anywhere; at least 0.5x OPT
    on the conversation trace at 5,000 blocks."""
    print("| policy | worst (policy − LRU) | at | conversation 5,000: fraction of OPT |")
    print("| --- | ---: | --- | ---: |")
    anchor = next((r for r in rows if r.trace == "conversation" and r.capacity == 5000), None)
    for p in policies:
        gaps = [(r.policies[p] - r.policies["lru"], f"{r.trace} {r.capacity:,}") for r in rows if "lru" in r.policies]
        worst = min(gaps) if gaps else (float("nan"), "-")
        if worst[0] >= 0:
            worst = (worst[0], "never below LRU")
        of_opt = f"{anchor.policies[p] / anchor.opt:.2f}" if anchor and anchor.opt else "-"
        print(f"| {p}{' (default)' if p == DEFAULT_POLICY else ''} | {worst[0]:+.4f} | {worst[1]} | {of_opt} |")


#: Issue 22's admission target: NVMe writes per hit at most this share of `all`'s ...
TARGET_WRITES = 0.5
#: ... with at most this much less prefix hit ratio.
TARGET_LOSS = 0.01


def _versus_all(r: AdmissionRow, name: str) -> tuple[float, float] | None:
    """(writes per hit as a share of `all`'s, prefix hit ratio minus `all`'s), None without `all`."""
    all_, run = r.runs.get("all"), r.runs.get(name)
    if all_ is None or run is None or name == "all":
        return None
    share = _per_hit(run) / _per_hit(all_) if 0 < _per_hit(all_) < float("inf") else float("nan")
    return share, run[0] - all_[0]


def _meets(share: float, change: float) -> bool:
    return share <= TARGET_WRITES and change >= -TARGET_LOSS


def print_admission_table(rows: list[AdmissionRow], nvme_factor: int) -> None:
    names = list(ADMISSIONS)
    others = [a for a in names if a != "all"]
    print(f"| trace | DRAM (NVMe = {nvme_factor}x) | policy | "
          + " | ".join(f"{a}: prefix hit ratio, NVMe writes/hit" for a in names)
          + "".join(f" | {a}: writes/hit ÷ all, hit ratio − all" for a in others) + " |")
    print("| --- | ---: | --- | " + " | ".join("---:" for _ in names + others) + " |")
    for r in rows:
        cells = [f"{r.runs[a][0]:.3f}, {_per_hit(r.runs[a]):.3f}" for a in names]
        for a in others:
            vs = _versus_all(r, a)
            cells.append("-" if vs is None else f"{vs[0]:.2f}, {vs[1]:+.4f}" + (" (target)" if _meets(*vs) else ""))
        print(f"| {r.trace} | {r.capacity:,} | {r.policy} | " + " | ".join(cells) + " |")


def print_admission_targets(rows: list[AdmissionRow]) -> None:
    """Per filter: where it meets the target, and its worst hit-ratio change against `all`."""
    print(f"| filter | meets the target (writes/hit ≤ {TARGET_WRITES} x all, hit ratio ≥ all − {TARGET_LOSS}) "
          f"| loses more than {TARGET_LOSS} | worst hit ratio − all |")
    print("| --- | --- | --- | ---: |")
    for a in (a for a in ADMISSIONS if a != "all"):
        versus = [(r, vs) for r in rows if (vs := _versus_all(r, a)) is not None]
        met = [f"{r.trace} {r.capacity:,}" for r, vs in versus if _meets(*vs)]
        lossy = [f"{r.trace} {r.capacity:,}" for r, vs in versus if vs[1] < -TARGET_LOSS]
        worst = min((vs[1] for _, vs in versus), default=float("nan"))
        print(f"| {a} | {len(met)}/{len(versus)}: {', '.join(met) or '-'} | {len(lossy)}: {', '.join(lossy) or '-'} "
              f"| {worst:+.4f} |")


def _per_hit(run: tuple[float, int, int]) -> float:
    return run[1] / run[2] if run[2] else float("inf")


def print_figures(rows: list[Row], adm: list[AdmissionRow]) -> None:
    for r in rows:
        base = f"policies_{r.trace}_{r.capacity}"
        lru = r.policies.get("lru", 0.0)
        if lru:
            figure(f"{base}_opt_prefix_hit_ratio", r.opt, "prefix hit ratio", "lru", lru, opt_block=round(r.opt_block, 4))
        for p, v in r.policies.items():
            if lru:
                figure(f"{base}_{p}_prefix_hit_ratio", v, "prefix hit ratio", "lru", lru,
                       opt=round(r.opt, 4), ratio_to_opt=round(v / r.opt, 3) if r.opt else None)
            elif r.opt:
                figure(f"{base}_{p}_prefix_hit_ratio", v, "prefix hit ratio", "opt", r.opt)
    for a in adm:
        for name, run in a.runs.items():
            vs = _versus_all(a, name)
            if vs is None or not 0 < _per_hit(run) < float("inf"):
                continue
            all_ = a.runs["all"]
            suffix = "" if name == "reuse" else f"_{name}"  # reuse's names as before
            figure(f"admission_{a.trace}_{a.capacity}_{a.policy}{suffix}_nvme_writes_per_hit", _per_hit(run),
                   "NVMe chunks written per prefix hit", "admission all", _per_hit(all_), higher_is_better=False,
                   filter=name, hit_ratio=round(run[0], 4), hit_ratio_all=round(all_[0], 4),
                   hit_ratio_change=round(vs[1], 4), meets_target=_meets(*vs))


def _names(text: str | None, default: list[str]) -> list[str]:
    if text is None or text == "all":
        return default
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        make_policy(n)  # unknown names fail here, listing the known ones
    return names


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"# {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 capacities per trace, LRU only for admission")
    ap.add_argument("--policies", default=None, help=f"policies to replay (default all registered: {', '.join(POLICIES)})")
    ap.add_argument("--admission-policies", default=None,
                    help=f"policies for the admission part (default lru and the default policy, {DEFAULT_POLICY})")
    ap.add_argument("--nvme-factor", type=int, default=4, help="NVMe capacity as a multiple of DRAM's (default 4)")
    ap.add_argument("--trace-dir", type=Path, default=TRACE_DIR)
    ap.add_argument("--agentic-seed", type=int, default=0)
    args = ap.parse_args()
    policies = _names(args.policies, list(POLICIES))
    if "lru" in POLICIES and "lru" not in policies:
        policies.insert(0, "lru")  # the baseline every ratio is taken against
    default_adm = ["lru"] if args.quick else list(dict.fromkeys(["lru", DEFAULT_POLICY]))
    adm_policies = _names(args.admission_policies, default_adm)

    traces = _timed("load traces", lambda: load_traces(args.trace_dir, args.agentic_seed))
    rows: list[Row] = []
    adm: list[AdmissionRow] = []
    for name, requests in traces.items():
        full, quick = CAPACITIES[name]
        caps = quick if args.quick else full
        refs = sum(map(len, requests))
        distinct = len({k for r in requests for k in r})
        print(f"{name}: {len(requests):,} requests, {refs:,} block references, {distinct:,} distinct "
              f"(hit ratio at most {1 - distinct / refs:.3f})")
        rows += _timed(f"{name} eviction", lambda: eviction_rows(name, requests, caps, policies))
        adm += _timed(f"{name} admission", lambda: admission_rows(name, requests, caps, adm_policies, args.nvme_factor))
    print()
    print("Prefix hit ratio (x LRU, fraction of OPT):")
    print()
    print_eviction_table(rows, policies)
    print()
    print("Against the targets (worst gap to LRU over every trace and capacity above):")
    print()
    print_target_table(rows, policies)
    print()
    print("Admission to NVMe (DRAM over NVMe, both tiers one policy):")
    print()
    print_admission_table(adm, args.nvme_factor)
    print()
    print("Admission against the target (every trace and capacity above):")
    print()
    print_admission_targets(adm)
    print()
    print_figures(rows, adm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
