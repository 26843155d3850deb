"""Object tier against raw obstore on the same S3 server (SeaweedFS on loopback), in one run.

    python -m bench.object_tier [--quick]

1. Put and get GB/s through the tier (`ObjectTier.write` / `read_into`: header,
   checksum, existence check, multipart puts and concurrent ranged gets, verification, copy
   into the destination buffer) for 4 MiB and 32 MiB chunks, against raw `obstore.put_async` /
   `get_async` of the same bytes, with the same number of requests in flight (4). Raw and tier
   rounds alternate and each figure is the median round, because the machine is shared.
2. Lookup latency of a 512-chunk prompt that misses locally, through a daemon's RPC:
   (a) the chunks are in the bucket (uploaded by another daemon): the lookup answers within its
   budget with the leading chunks found so far (`found_*`), and the walk goes on in the
   background; `all_indexed` is the time until a lookup sees all 512;
   (b) they are nowhere: one wave answers. Baseline: raw obstore, 512 concurrent HEADs of the
   same objects (what a per-key existence check costs). p50 and p99 over the repeats.
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


def lookup_figures(s3: SeaweedS3, work: Path, repeats: int, budget: str) -> None:
    layout = Layout("bench-lookup", "bfloat16", 1, 1, 64, chunk_tokens=256)  # 32 KiB chunks
    url = f"s3://{BUCKET}/lookup-{os.urandom(4).hex()}"
    env = {**os.environ, **s3.env()}
    common = ["--dram", "256MiB", "--nvme", "0", "--object-url", url, "--no-calibrate",
              "--object-lookup-budget", budget]
    a = DaemonProcess(work / "a.sock", [*common, "--node-id", "a"], env=env, log_path=work / "a.log").start()
    b = DaemonProcess(work / "b.sock", [*common, "--node-id", "b"], env=env, log_path=work / "b.log").start()
    try:
        keys = chunk_keys(layout, np.arange(512 * 256))
        with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb:
            data = np.random.default_rng(0).integers(0, 256, layout.chunk_bytes, dtype=np.uint8)
            ca.put_chunks(layout, keys, [data] * len(keys))
            deadline = time.monotonic() + 300
            def pending(t: dict) -> bool:
                return bool(t["upload_queued"] or t["upload_inflight"] or t["chunks"] < 512)

            while pending(next(t for t in ca.stat()["tiers"] if t["name"] == "object")):
                if time.monotonic() > deadline:
                    raise TimeoutError("uploads did not finish")
                time.sleep(0.05)
            def quiet() -> None:  # no background walk left from the previous lookup
                while next(t for t in cb.stat()["tiers"] if t["name"] == "object")["remote_walks"]:
                    time.sleep(0.005)

            hit, found, full, miss = [], [], [], []
            for r in range(repeats + 1):
                cb.evict(keys=keys)  # b forgets them (another node's objects are not deleted)
                quiet()
                t0 = time.perf_counter()
                res = cb.lookup(keys)
                t1 = time.perf_counter()
                while cb.lookup(keys).prefix < len(keys):  # the walk goes on in the background
                    time.sleep(0.005)
                t2 = time.perf_counter()
                quiet()
                fresh = chunk_keys(layout, np.arange(512 * 256) + (r + 1) * 10**6)
                t3 = time.perf_counter()
                assert cb.lookup(fresh).prefix == 0
                t4 = time.perf_counter()
                if r:
                    hit.append(t1 - t0)
                    found.append(res.prefix)
                    full.append(t2 - t0)
                    miss.append(t4 - t3)
            store = open_store(url, env=s3.env())

            async def heads() -> float:
                t0 = time.perf_counter()
                await asyncio.gather(*(obstore.head_async(store, object_path(k)) for k in keys))
                return time.perf_counter() - t0

            raw = [asyncio.run(heads()) for _ in range(repeats)]
    finally:
        a.stop()
        b.stop()
    raw_p50, raw_p99 = _pct(raw, 50), _pct(raw, 99)
    extra = {"chunks": 512, "budget": budget, "repeats": repeats}
    figure("object_lookup_512_hit_p50", _pct(hit, 50) * 1e3, "ms", "raw obstore 512 concurrent HEADs p50",
           raw_p50 * 1e3, higher_is_better=False, found_min=min(found), found_median=statistics.median(found), **extra)
    figure("object_lookup_512_hit_p99", _pct(hit, 99) * 1e3, "ms", "raw obstore 512 concurrent HEADs p99",
           raw_p99 * 1e3, higher_is_better=False, **extra)
    figure("object_lookup_512_all_indexed_p50", _pct(full, 50) * 1e3, "ms", "raw obstore 512 concurrent HEADs p50",
           raw_p50 * 1e3, higher_is_better=False, **extra)
    figure("object_lookup_512_miss_p50", _pct(miss, 50) * 1e3, "ms", "raw obstore 512 concurrent HEADs p50",
           raw_p50 * 1e3, higher_is_better=False, **extra)
    figure("object_lookup_512_miss_p99", _pct(miss, 99) * 1e3, "ms", "raw obstore 512 concurrent HEADs p99",
           raw_p99 * 1e3, higher_is_better=False, **extra)


def _pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (under a minute)")
    ap.add_argument("--budget", default="50ms", help="the daemons' --object-lookup-budget (default 50ms)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
    s3 = SeaweedS3(work / "s3").start()
    try:
        s3.create_bucket(BUCKET)
        obstore.put(open_store(f"s3://{BUCKET}/warm", env=s3.env(), timeout=60), "x", b"warm")
        total, rounds, repeats = (64, 2, 10) if args.quick else (256, 5, 50)
        for size_mib in (4, 32):
            asyncio.run(transfer_figures(s3, size_mib, total, rounds))
        lookup_figures(s3, work, repeats, args.budget)
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
