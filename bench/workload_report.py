"""What `bench.workload` measured, reduced to figures: requests/s, TTFT p50/p99 and hit ratios
per tier, each with its ratio to configuration (a) (vLLM's prefix caching alone) of the same
run; a table for people, FIGURE lines for scripts and a PNG of the TTFT distributions.

Definitions (one workload, one configuration):

- requests/s: requests over the workload's wall time (first `add_request` to the last
  request's end). Requests go one at a time (closed loop), so this is 1 / mean latency, where a
  request's latency is its prefill plus the few decode steps of `max_tokens`.
- TTFT p50 / p99: percentiles (linear interpolation, numpy's default) of the requests' TTFTs.
- hit ratios, in prompt tokens: `engine` = tokens vLLM's own prefix cache supplied
  (`num_local_cached_tokens`), `tierd` = tokens the connector loaded
  (`num_external_cached_tokens`), `total` = their sum (vLLM's `num_cached_tokens`), each over
  all prompt tokens.
- hit ratios per daemon tier (`dram`, `nvme`): the daemon's own counters (`tierd stat`), as the
  difference between the workload's end and start: hits in that tier over the chunk references
  that reached the daemon's first tier (each lookup counts its leading run of present chunks
  and the first missing one). The connector looks up every full chunk of a prompt, including
  those vLLM's prefix cache already holds, so these count what the daemon could serve, and
  `tierd` counts what was loaded.

Ratios follow ../shared/CONVENTIONS.md: value/baseline for throughputs and hit ratios,
baseline/value for times, so higher is better. A baseline of zero (no hit at all in (a)) gives
`"ratio": null`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

#: Configuration keys in run order; "a" is the baseline of every ratio.
BASELINE = "a"


@dataclass(frozen=True, slots=True)
class Config:
    """One way of serving the workloads: vLLM alone, or vLLM with tierd behind its connector."""

    key: str  # a, b, c, d
    name: str  # used in figure names
    label: str  # for people
    daemon: bool = False
    nvme: bool = False
    load_plan: bool = False


CONFIGS: tuple[Config, ...] = (
    Config("a", "vllm_prefix_cache", "(a) vLLM prefix caching alone"),
    Config("b", "tierd_dram", "(b) tierd DRAM", daemon=True),
    Config("c", "tierd_dram_nvme", "(c) tierd DRAM+NVMe", daemon=True, nvme=True),
    Config("d", "tierd_plan", "(d) tierd DRAM+NVMe, cost-model plan", daemon=True, nvme=True, load_plan=True),
)
CONFIG_BY_KEY = {c.key: c for c in CONFIGS}


@dataclass(frozen=True, slots=True)
class RequestResult:
    ttft_s: float
    latency_s: float
    prompt_tokens: int
    cached_tokens: int
    local_cached_tokens: int
    external_cached_tokens: int
    output_tokens: int = 0


@dataclass(slots=True)
class RunResult:
    """One workload under one configuration."""

    config: str
    workload: str
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)
    stat_before: dict[str, Any] | None = None
    stat_after: dict[str, Any] | None = None

    @property
    def requests_per_s(self) -> float:
        return len(self.requests) / self.wall_s if self.wall_s > 0 else 0.0

    def ttft_percentile(self, q: float) -> float:
        return percentile([r.ttft_s for r in self.requests], q)

    def hit_ratios(self) -> dict[str, float]:
        """Token hit ratios (engine, tierd, total) and the daemon's per-tier ones (see the
        module docstring)."""
        prompt = sum(r.prompt_tokens for r in self.requests)
        out = {
            "total": sum(r.cached_tokens for r in self.requests) / prompt if prompt else 0.0,
            "engine": sum(r.local_cached_tokens for r in self.requests) / prompt if prompt else 0.0,
            "tierd": sum(r.external_cached_tokens for r in self.requests) / prompt if prompt else 0.0,
        }
        out.update(daemon_tier_hit_ratios(self.stat_before, self.stat_after))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "workload": self.workload, "wall_s": self.wall_s,
                "requests": [asdict(r) for r in self.requests], "stat_before": self.stat_before,
                "stat_after": self.stat_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunResult":
        return cls(d["config"], d["workload"], d["wall_s"], [RequestResult(**r) for r in d["requests"]],
                   d.get("stat_before"), d.get("stat_after"))


def missing_lookups(run: RunResult, chunk_tokens: int) -> int:
    """How many requests with a full chunk the daemon saw no lookup for (0 without a daemon).

    The connector looks up every such request at least once; fewer lookups mean it lost the
    daemon for a while (it then treats requests as misses, so the run measured recompute, not
    tierd: the engine log says why)."""
    if run.stat_before is None or run.stat_after is None:
        return 0
    expected = sum(1 for r in run.requests if r.prompt_tokens >= chunk_tokens)
    seen = int(run.stat_after.get("lookups", 0)) - int(run.stat_before.get("lookups", 0))
    return max(0, expected - seen)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def daemon_tier_hit_ratios(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """Per tier: hits between the two `stat` snapshots over the chunk references that reached
    the first tier in that time. Empty without a daemon."""
    if before is None or after is None:
        return {}
    b = {t["name"]: t for t in before["tiers"]}
    a = {t["name"]: t for t in after["tiers"]}
    names = [t["name"] for t in after["tiers"]]
    if not names:
        return {}
    first = names[0]
    refs = (a[first]["hits"] + a[first]["misses"]) - (b[first]["hits"] + b[first]["misses"])
    return {n: ((a[n]["hits"] - b[n]["hits"]) / refs if refs > 0 else 0.0) for n in names}


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Figure:
    """One FIGURE line (../shared/CONVENTIONS.md)."""

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.higher_is_better:
            return self.value / self.baseline_value if self.baseline_value > 0 else None
        return self.baseline_value / self.value if self.value > 0 else None

    def line(self) -> str:
        ratio = self.ratio
        fig = {"name": self.name, "value": round(self.value, 4), "unit": self.unit, "baseline": self.baseline,
               "baseline_value": round(self.baseline_value, 4), "ratio": None if ratio is None else round(ratio, 3),
               **self.extra}
        return "FIGURE " + json.dumps(fig)


def _index(results: Iterable[RunResult]) -> dict[tuple[str, str], RunResult]:
    return {(r.workload, r.config): r for r in results}


def figures(results: Sequence[RunResult], *, ideal_hit: dict[str, float] | None = None) -> list[Figure]:
    """Every figure of a run: for each workload that (a) ran, each other configuration's
    requests/s and TTFT p50/p99 against (a)'s, and every configuration's hit ratios against (a)'s
    total hit ratio. `ideal_hit` (per workload: the hit ratio of an unbounded cache) is added
    to the hit-ratio lines for context."""
    by = _index(results)
    workloads = list(dict.fromkeys(r.workload for r in results))
    base_label = CONFIG_BY_KEY[BASELINE].label
    out: list[Figure] = []
    for wl in workloads:
        base = by.get((wl, BASELINE))
        if base is None:
            continue
        others = [c for c in CONFIGS if c.key != BASELINE and (wl, c.key) in by]
        for c in others:
            r = by[(wl, c.key)]
            out.append(Figure(f"workload_{wl}_requests_per_s_{c.name}", r.requests_per_s, "requests/s", base_label,
                              base.requests_per_s, extra={"requests": len(r.requests)}))
        for q in (50, 99):
            for c in others:
                r = by[(wl, c.key)]
                out.append(Figure(f"workload_{wl}_ttft_p{q}_{c.name}", r.ttft_percentile(q), "s", base_label,
                                  base.ttft_percentile(q), higher_is_better=False))
        base_hit = base.hit_ratios()["total"]
        extra = {"ideal": round(ideal_hit[wl], 4)} if ideal_hit and wl in ideal_hit else {}
        for c in CONFIGS:
            r = by.get((wl, c.key))
            if r is None:
                continue
            hits = r.hit_ratios()
            tiers = ["total", "engine"] + (["tierd"] + [t for t in hits if t not in ("total", "engine", "tierd")]
                                           if c.daemon else [])
            for tier in tiers:
                out.append(Figure(f"workload_{wl}_hit_ratio_{tier}_{c.name}", hits[tier], "hit ratio",
                                  f"{base_label}, total", base_hit, extra=dict(extra)))
    return out


def canary_counts(run: RunResult, base: RunResult | None) -> dict[str, int]:
    """What the live canary did in `run`: requests sampled (loaded a hit in `base`, the same
    requests without the canary, and loaded nothing here), chunks the daemon compared, and
    chunks that diverged (the daemon's counters over the workload)."""
    sampled = 0
    if base is not None:
        sampled = sum(1 for r, b in zip(run.requests, base.requests)
                      if b.external_cached_tokens > 0 and r.external_cached_tokens == 0)
    before = (run.stat_before or {}).get("canary", {})
    after = (run.stat_after or {}).get("canary", {})
    return {"requests_sampled": sampled,
            "chunks_compared": int(after.get("compared", 0)) - int(before.get("compared", 0)),
            "chunks_diverged": int(after.get("diverged", 0)) - int(before.get("diverged", 0))}


def canary_figures(results: Sequence[RunResult], canary_runs: Sequence[tuple[float, RunResult]]) -> list[Figure]:
    """Each canary run's requests/s against the same configuration without the canary, same run."""
    by = _index(results)
    out: list[Figure] = []
    for rate, run in canary_runs:
        base = by.get((run.workload, run.config))
        if base is None:
            continue
        config = CONFIG_BY_KEY[run.config]
        out.append(Figure(f"workload_{run.workload}_requests_per_s_{config.name}_canary_{rate:g}", run.requests_per_s,
                          "requests/s", f"{config.label}, canary off", base.requests_per_s,
                          extra={"verify_sample": rate, "requests": len(run.requests), **canary_counts(run, base)}))
    return out


def canary_table(results: Sequence[RunResult], canary_runs: Sequence[tuple[float, RunResult]]) -> str:
    """One line per canary run: requests/s with and without it, and what it compared."""
    by = _index(results)
    lines = [f"{'workload':<9} {'config':<38} {'canary':>7} {'req/s':>7} {'off':>7} {'ratio':>6} "
             f"{'sampled':>8} {'compared':>9} {'diverged':>9}"]
    for rate, run in canary_runs:
        base = by.get((run.workload, run.config))
        off = base.requests_per_s if base is not None else float("nan")
        n = canary_counts(run, base)
        ratio = run.requests_per_s / off if off and off > 0 else float("nan")
        lines.append(f"{run.workload:<9} {CONFIG_BY_KEY[run.config].label:<38} {rate:>7g} {run.requests_per_s:>7.3f} "
                     f"{off:>7.3f} {ratio:>6.3f} {n['requests_sampled']:>8} {n['chunks_compared']:>9} "
                     f"{n['chunks_diverged']:>9}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- people


def table(results: Sequence[RunResult]) -> str:
    """A plain-text table: one row per workload and configuration, ratios to (a) in brackets."""
    by = _index(results)
    workloads = list(dict.fromkeys(r.workload for r in results))
    lines = [f"{'workload':<9} {'config':<38} {'req/s':>14} {'TTFT p50 s':>15} {'TTFT p99 s':>15} "
             f"{'hit: total engine tierd | dram nvme (daemon)':>44}"]
    for wl in workloads:
        base = by.get((wl, BASELINE))
        for c in CONFIGS:
            r = by.get((wl, c.key))
            if r is None:
                continue
            rps, p50, p99 = r.requests_per_s, r.ttft_percentile(50), r.ttft_percentile(99)

            def rel(v: float, b: float | None, time: bool) -> str:
                if b is None or c.key == BASELINE or v <= 0 or b <= 0:
                    return ""
                return f" ({(b / v if time else v / b):.2f}x)"

            h = r.hit_ratios()
            daemon = " ".join(f"{h[t]:.2f}" for t in h if t not in ("total", "engine", "tierd")) or "-"
            lines.append(
                f"{wl:<9} {c.label:<38} {rps:>6.3f}{rel(rps, base.requests_per_s if base else None, False):<8} "
                f"{p50:>7.3f}{rel(p50, base.ttft_percentile(50) if base else None, True):<8} "
                f"{p99:>7.3f}{rel(p99, base.ttft_percentile(99) if base else None, True):<8} "
                f"{h['total']:>10.2f} {h['engine']:>6.2f} {h['tierd']:>5.2f} | {daemon}")
    return "\n".join(lines)


def plot_ttft(results: Sequence[RunResult], path: Path) -> Path:
    """A PNG with one panel per workload: the TTFT distribution (empirical CDF, log time axis)
    of each configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    by = _index(results)
    workloads = list(dict.fromkeys(r.workload for r in results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        for c in CONFIGS:
            r = by.get((wl, c.key))
            if r is None or not r.requests:
                continue
            t = np.sort([x.ttft_s for x in r.requests])
            y = np.arange(1, len(t) + 1) / len(t)
            ax.step(np.r_[t[0], t], np.r_[0.0, y], where="post", label=f"{c.label}: p50 {np.median(t):.2f}s")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("TTFT (s, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(wl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("TTFT distribution per configuration (bench.workload)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
