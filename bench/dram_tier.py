"""DRAM tier through the daemon: put/get GB/s against single-threaded memcpy, and lookup latency.

    python -m bench.dram_tier [--quick]

A put is reserve RPC + copy into the shared arena + commit RPC; a get is acquire RPC + copy
out of the arena + release RPC. Both are measured with one chunk per RPC pair (the worst case)
and with 16 chunks per RPC pair (how a connector issues a request). The baseline is
`np.copyto` of the same bytes between two private buffers, in the same process and run.
Lookup latency is one RPC for a 512-chunk prompt (a 128k-token prompt at 256 tokens/chunk).

The slot check (a canary per 4 KiB page armed at reserve and checked at commit, so a slot its
writer did not fully write is never stored: `tierd.store.canary`) is priced by the same puts
against a second daemon started with `--no-slot-check`, in the same run, sizes interleaved.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.figures import best_seconds, figure
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout

MiB = 1 << 20


def layout_of(chunk_mib: int) -> Layout:
    """A bf16 layout whose chunks are exactly `chunk_mib` MiB (1 layer = 1 MiB at 256 tokens)."""
    return Layout(f"bench-{chunk_mib}m", "bfloat16", chunk_mib, 8, 128, chunk_tokens=256)


def bench_chunk_size(client: Client, chunk_mib: int, per_rpc: int, total_mib: int, repeats: int,
                     unchecked: Client) -> None:
    """Put and get `total_mib` of distinct chunks, `per_rpc` chunks per RPC pair. The memcpy
    baseline copies the same number of distinct buffers, so neither side runs from cache.
    `unchecked` is a daemon without the slot check: the same puts there price the check."""
    layout = layout_of(chunk_mib)
    assert layout.chunk_bytes == chunk_mib * MiB
    n = max(per_rpc, total_mib // chunk_mib)
    n -= n % per_rpc
    src = [np.full(layout.chunk_bytes, i % 251, dtype=np.uint8) for i in range(n)]
    dst = [np.ones(layout.chunk_bytes, dtype=np.uint8) for _ in range(n)]
    nbytes = n * layout.chunk_bytes

    def memcpy() -> None:
        for i in range(n):
            np.copyto(dst[i], src[i])

    counter = iter(range(10**9))

    def put(into: Client = client) -> None:
        base = next(counter) * n * 256
        for start in range(0, n, per_rpc):
            keys = chunk_keys(layout, np.arange(base + start * 256, base + (start + per_rpc) * 256))
            with into.put(layout, keys) as batch:
                assert len(batch.reserved) == per_rpc
                for i in batch.reserved:
                    np.copyto(batch.view(i), src[start + i])

    unchecked.register_layout(layout)
    t_mem = best_seconds(memcpy, repeats=repeats)
    t_put = best_seconds(put, repeats=repeats)
    t_put_unchecked = best_seconds(lambda: put(unchecked), repeats=repeats)
    unchecked.evict(everything=True)
    stored = chunk_keys(layout, np.arange(n * 256) + 10**12)
    assert client.put_chunks(layout, stored, src) == n

    def get() -> None:
        for start in range(0, n, per_rpc):
            with client.get(layout, stored[start : start + per_rpc]) as lease:
                assert lease.count == per_rpc
                for i in range(per_rpc):
                    np.copyto(dst[start + i], lease.view(i))

    t_get = best_seconds(get, repeats=repeats)
    mem_gbs = nbytes / t_mem / 1e9
    tag = f"{chunk_mib}MiB_x{per_rpc}"
    figure(f"dram_put_{tag}", nbytes / t_put / 1e9, "GB/s", "memcpy", mem_gbs)
    figure(f"dram_get_{tag}", nbytes / t_get / 1e9, "GB/s", "memcpy", mem_gbs)
    figure(f"dram_put_{tag}_slot_check", nbytes / t_put / 1e9, "GB/s", "put with --no-slot-check",
           nbytes / t_put_unchecked / 1e9)
    assert bytes(dst[n - 1][:8]) == bytes([(n - 1) % 251] * 8)
    client.evict(everything=True)


def bench_lookup(client: Client, iterations: int) -> None:
    small = Layout("bench-lookup", "bfloat16", 1, 1, 8, chunk_tokens=256)  # tiny chunks: only the index matters
    keys = chunk_keys(small, np.arange(512 * 256))
    client.put_chunks(small, keys, [np.zeros(small.chunk_bytes, np.uint8)] * len(keys))
    assert client.lookup(keys).prefix == 512
    lat = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        client.lookup(keys)
        lat.append(time.perf_counter() - t0)
    ping = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        client._call("ping")
        ping.append(time.perf_counter() - t0)
    lat.sort()
    ping.sort()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    ping50 = ping[len(ping) // 2]
    figure("lookup_512_chunks_p50", p50 * 1e6, "us", "empty ping RPC p50", ping50 * 1e6, higher_is_better=False)
    figure("lookup_512_chunks_p99", p99 * 1e6, "us", "empty ping RPC p50", ping50 * 1e6, higher_is_better=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a run under a minute")
    ap.add_argument("--dram", default="2GiB")
    args = ap.parse_args()
    total_mib = 128 if args.quick else 512
    repeats = 3 if args.quick else 7
    tmp = Path(tempfile.mkdtemp(prefix="tdb-", dir="/tmp"))
    try:
        common = ["--dram", args.dram, "--nvme", "0", "--nvme-dir", str(tmp / "n")]
        with DaemonProcess(tmp / "s.sock", common) as d, \
                DaemonProcess(tmp / "u.sock", common + ["--no-slot-check"]) as u:
            with Client.connect(d.socket) as client, Client.connect(u.socket) as unchecked:
                for chunk_mib in (1, 4, 32):
                    for per_rpc in (1, 16):
                        if chunk_mib * per_rpc <= 512:
                            bench_chunk_size(client, chunk_mib, per_rpc, total_mib, repeats, unchecked)
                bench_lookup(client, 300 if args.quick else 3000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
