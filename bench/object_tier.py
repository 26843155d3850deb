"""Object tier against raw obstore on the same S3 server (SeaweedFS on loopback), in one run.

    python -m bench.object_tier [--quick]

1. Put and get GB/s through the tier (`ObjectTier.write` / `read_into`: header,
   checksum, existence check, multipart puts and concurrent ranged gets, verification, copy
   into the destination buffer) for 4 MiB and 32 MiB chunks, against raw `obstore.put_async` /
   `get_async` of the same bytes, with the same number of requests in flight (4). Raw and tier
   rounds alternate and each figure is the median round, because the machine is shared.
2. Cross-node lookups of a 512-chunk prompt that misses locally, through a daemon's RPC, by two
   daemons in the same run: one with `--object-lookup-strategy bisect` (the default), one with
   `walk` (the search before it, the baseline); the repeats alternate between them.
   (a) the chunks are in the bucket (uploaded by a third daemon): how many the lookup had
   indexed when it answered (within its budget; `found_p50`, and `found_p99`: what 99% of
   lookups reach), how long it took (`hit_*`), and the time until a lookup sees all 512
   (`all_indexed_*`); `found_*_vs_heads` compares with raw obstore firing 512 concurrent HEADs
   of the same objects from this process (the leading run answered within the budget);
   (b) a 512-chunk prompt that shares only its first 300 chunks with the uploaded one
   (`shares_300_*`: found within the budget, answer time; the rounds bisect needs to narrow);
   (c) a prompt nowhere in the bucket (`miss_*`; target p99 <= 15 ms).
   p50 and p99 over the repeats.

    python -m bench.object_tier --only lookup [--quick | --repeats N] [--budget 50ms]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import obstore

from bench.figures import figure
from tests.s3server import SeaweedS3
from tierd.client import Client
from tierd.config.parsers import parse_seconds
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout
from tierd.tiers.object.bucket import open_store
from tierd.tiers.object.format import object_path
from tierd.tiers.object.tier import ObjectTier

MiB = 1 << 20
INFLIGHT = 4
BUCKET = "bench"


async def _bounded(coros, limit: int = INFLIGHT) -> None:
    sem = asyncio.Semaphore(limit)

    async def run(c):
        async with sem:
            await c

    await asyncio.gather(*(run(c) for c in coros))


async def transfer_figures(s3: SeaweedS3, size_mib: int, total_mib: int, rounds: int) -> None:
    url = f"s3://{BUCKET}/xfer-{size_mib}m-{os.urandom(4).hex()}"
    tier = ObjectTier(url, node="bench", env=s3.env(), timeout=60.0)
    raw = open_store(url + "-raw", env=s3.env(), timeout=60.0)
    n = max(2, total_mib // size_mib)
    size = size_mib * MiB
    payloads = [np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8) for i in range(n)]
    dests = [bytearray(size) for _ in range(n)]
    times: dict[str, list[float]] = {"raw_put": [], "tier_put": [], "raw_get": [], "tier_get": []}
    for r in range(rounds + 1):  # round 0 warms both paths up and is not counted
        keys = [os.urandom(16) for _ in range(n)]
        t0 = time.perf_counter()
        await _bounded(obstore.put_async(raw, f"r{r}/{i}", memoryview(p)) for i, p in enumerate(payloads))
        t1 = time.perf_counter()
        await _bounded(tier.write(k, "be9c", "bench", memoryview(p)) for k, p in zip(keys, payloads))
        t2 = time.perf_counter()

        async def raw_get(i: int) -> None:
            got = await obstore.get_async(raw, f"r{r}/{i}")
            buf = await got.bytes_async()
            assert len(buf) == size

        await _bounded(raw_get(i) for i in range(n))
        t3 = time.perf_counter()

        async def tier_get(i: int) -> None:
            assert await tier.read_into(keys[i], memoryview(dests[i]), layout_id="be9c", payload_len=size)

        await _bounded(tier_get(i) for i in range(n))
        t4 = time.perf_counter()
        if r:
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[name].append(dt)
        assert dests[0] == payloads[0].tobytes()
        # free the round's space (SeaweedFS on loopback has a bounded number of volumes); untimed
        await obstore.delete_async(raw, [f"r{r}/{i}" for i in range(n)])
        for k in keys:
            await tier.delete(k)
    gb = n * size / 1e9
    med = {k: statistics.median(v) for k, v in times.items()}
    figure(f"object_put_{size_mib}MiB", gb / med["tier_put"], "GB/s", "raw obstore put", gb / med["raw_put"],
           chunks=n, inflight=INFLIGHT, rounds=rounds)
    figure(f"object_get_{size_mib}MiB", gb / med["tier_get"], "GB/s", "raw obstore get", gb / med["raw_get"],
           chunks=n, inflight=INFLIGHT, rounds=rounds)


STRATEGIES = ("bisect", "walk")
#: The shared part of the partly shared prompt: not a position bisect asks about first.
PART = 300


def lookup_figures(s3: SeaweedS3, work: Path, repeats: int, budget: str) -> None:
    layout = Layout("bench-lookup", "bfloat16", 1, 1, 64, chunk_tokens=256)  # 32 KiB chunks
    url = f"s3://{BUCKET}/lookup-{os.urandom(4).hex()}"
    env = {**os.environ, **s3.env()}
    budget_s = parse_seconds(budget, "--budget", None)
    common = ["--dram", "256MiB", "--nvme", "0", "--object-url", url, "--no-calibrate",
              "--object-lookup-budget", budget]
    a = DaemonProcess(work / "a.sock", [*common, "--node-id", "a"], env=env, log_path=work / "a.log").start()
    nodes = {s: DaemonProcess(work / f"b-{s}.sock", [*common, "--node-id", f"b-{s}", "--object-lookup-strategy", s],
                              env=env, log_path=work / f"b-{s}.log").start() for s in STRATEGIES}
    try:
        keys = chunk_keys(layout, np.arange(512 * 256))
        with Client.connect(a.socket) as ca:
            data = np.random.default_rng(0).integers(0, 256, layout.chunk_bytes, dtype=np.uint8)
            ca.put_chunks(layout, keys, [data] * len(keys))
            deadline = time.monotonic() + 300

            def pending(t: dict) -> bool:
                return bool(t["upload_queued"] or t["upload_inflight"] or t["chunks"] < 512)

            while pending(_object(ca)):
                if time.monotonic() > deadline:
                    raise TimeoutError("uploads did not finish")
                time.sleep(0.05)
        clients = {s: Client.connect(d.socket) for s, d in nodes.items()}
        runs: dict[str, dict[str, list[float]]] = {
            s: {"hit": [], "found": [], "full": [], "miss": [], "rounds": [], "heads": [], "part_hit": [],
                "part_found": [], "part_rounds": []} for s in STRATEGIES}
        try:
            for r in range(repeats + 1):  # repeat 0 warms every path up and is not counted
                order = STRATEGIES if r % 2 else STRATEGIES[::-1]  # neither always goes first
                for s in order:
                    got = _lookup_once(clients[s], layout, keys, r)
                    if r:
                        for name, value in got.items():
                            runs[s][name].append(value)
        finally:
            for c in clients.values():
                c.close()
        store = open_store(url, env=s3.env())
        asyncio.run(_raw_heads(store, keys, budget_s))  # warm-up (connections), not counted
        raw = [asyncio.run(_raw_heads(store, keys, budget_s)) for _ in range(repeats)]
    finally:
        a.stop()
        for d in nodes.values():
            d.stop()
    _lookup_report(runs, raw, budget, repeats)


def _object(c: Client) -> dict:
    return next(t for t in c.stat()["tiers"] if t["name"] == "object")


def _lookup_once(c: Client, layout: Layout, keys: list[bytes], r: int) -> dict[str, float]:
    """One node's lookup of the 512 chunks it does not hold (answer time and chunks found by
    then), the time until a lookup sees all 512, the rounds and HEADs the search took, and the
    answer time for a prompt nowhere in the bucket."""
    def quiet() -> None:  # no background search left from the previous lookup
        while _object(c)["remote_walks"]:
            time.sleep(0.005)

    c.evict(keys=keys)  # the node forgets them (another node's objects are not deleted)
    quiet()
    before = _object(c)
    t0 = time.perf_counter()
    res = c.lookup(keys)
    t1 = time.perf_counter()
    while c.lookup(keys).prefix < len(keys):  # the search goes on in the background
        time.sleep(0.005)
    t2 = time.perf_counter()
    quiet()
    after = _object(c)
    fresh = chunk_keys(layout, np.arange(512 * 256) + (r + 1) * 10**6)  # a prompt no node wrote
    t3 = time.perf_counter()
    assert c.lookup(fresh).prefix == 0
    t4 = time.perf_counter()
    # a prompt that shares its first PART chunks with the uploaded one, then goes its own way
    tokens = np.arange(512 * 256)
    tokens[PART * 256:] += (r + 1) * 10**7
    part = chunk_keys(layout, tokens)
    c.evict(keys=keys)
    quiet()
    mid = _object(c)
    t5 = time.perf_counter()
    part_res = c.lookup(part)
    t6 = time.perf_counter()
    quiet()
    assert c.lookup(part).prefix == PART
    return {"hit": t1 - t0, "found": res.prefix, "full": t2 - t0, "miss": t4 - t3,
            "rounds": after["remote_rounds"] - before["remote_rounds"],
            "heads": after["remote_heads"] - before["remote_heads"],
            "part_hit": t6 - t5, "part_found": part_res.prefix,
            "part_rounds": _object(c)["remote_rounds"] - mid["remote_rounds"]}


async def _raw_heads(store: object, keys: list[bytes], budget: float) -> tuple[int, float, int]:
    """512 concurrent HEADs of the same objects through raw obstore, in this process: the
    leading run of keys whose HEAD had answered within the budget, the time until all had, and
    how many had answered within the budget in any order."""
    answered: list[float | None] = [None] * len(keys)
    t0 = time.perf_counter()

    async def head(i: int) -> None:
        await obstore.head_async(store, object_path(keys[i]))
        answered[i] = time.perf_counter() - t0

    await asyncio.gather(*(head(i) for i in range(len(keys))))
    total = time.perf_counter() - t0
    run = 0
    while run < len(keys) and (answered[run] or budget + 1) <= budget:
        run += 1
    return run, total, sum(1 for t in answered if t is not None and t <= budget)


def _lookup_report(runs: dict[str, dict[str, list[float]]], raw: list[tuple[int, float, int]], budget: str,
                   repeats: int) -> None:
    """FIGURE lines: chunks found within the budget (p50; p99 = what 99% of lookups reach, the
    1st percentile), bisect against the wave walk and against raw concurrent HEADs; answer and
    all-indexed times; a prompt nowhere in the bucket (target: p99 <= 15 ms)."""
    b, w = runs["bisect"], runs["walk"]
    extra = {"chunks": 512, "budget": budget, "repeats": repeats,
             "bisect_rounds_median": statistics.median(b["rounds"]), "bisect_heads_median": statistics.median(b["heads"]),
             "walk_rounds_median": statistics.median(w["rounds"]), "walk_heads_median": statistics.median(w["heads"])}
    raw_found = [float(f) for f, _, _ in raw]
    raw_any = statistics.median(a for _, _, a in raw)
    for label, q in (("p50", 50), ("p99", 1)):  # found: the low tail is the bad one
        value = _pct(b["found"], q)
        walk = _pct(w["found"], q)
        heads = _pct(raw_found, q)
        figure(f"object_lookup_512_found_{label}", value, "chunks", f"wave walk (same run) {label}", max(walk, 1.0),
               **({"walk_found_zero": True} if walk == 0 else {}), **extra)
        figure(f"object_lookup_512_found_{label}_vs_heads", value, "chunks",
               f"raw obstore 512 concurrent HEADs, answered within the budget {label}", max(heads, 1.0),
               **({"heads_found_zero": True} if heads == 0 else {}), heads_answered_any_order_median=raw_any,
               chunks=512, budget=budget, repeats=repeats)
    for label, q in (("p50", 50), ("p99", 1)):
        figure(f"object_lookup_512_shares_{PART}_found_{label}", _pct(b["part_found"], q), "chunks",
               f"wave walk (same run) {label}", max(_pct(w["part_found"], q), 1.0), chunks=512, shared=PART,
               budget=budget, repeats=repeats, bisect_rounds_median=statistics.median(b["part_rounds"]),
               walk_rounds_median=statistics.median(w["part_rounds"]))
    for name, key in (("hit", "hit"), ("all_indexed", "full"), (f"shares_{PART}_hit", "part_hit")):
        for label, p in (("p50", 50), ("p99", 99)):
            figure(f"object_lookup_512_{name}_{label}", _pct(b[key], p) * 1e3, "ms", f"wave walk (same run) {label}",
                   _pct(w[key], p) * 1e3, higher_is_better=False, chunks=512, budget=budget, repeats=repeats)
    for label, p in (("p50", 50), ("p99", 99)):
        value = _pct(b["miss"], p) * 1e3
        figure(f"object_lookup_512_miss_{label}", value, "ms", f"wave walk (same run) {label}",
               _pct(w["miss"], p) * 1e3, higher_is_better=False, target_ms=15, met=value <= 15,
               raw_heads_all_answered_ms=round(_pct([t for _, t, _ in raw], p) * 1e3, 2), budget=budget,
               repeats=repeats)


def _pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (under a minute)")
    ap.add_argument("--budget", default="50ms", help="the daemons' --object-lookup-budget (default 50ms)")
    ap.add_argument("--only", choices=("transfer", "lookup"), help="run only these figures")
    ap.add_argument("--repeats", type=int, help="lookup repeats per strategy (default: 50; 10 with --quick)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
    s3 = SeaweedS3(work / "s3").start()
    try:
        s3.create_bucket(BUCKET)
        obstore.put(open_store(f"s3://{BUCKET}/warm", env=s3.env(), timeout=60), "x", b"warm")
        total, rounds, repeats = (64, 2, 10) if args.quick else (256, 5, 50)
        if args.only in (None, "transfer"):
            for size_mib in (4, 32):
                asyncio.run(transfer_figures(s3, size_mib, total, rounds))
        if args.only in (None, "lookup"):
            lookup_figures(s3, work, args.repeats or repeats, args.budget)
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
