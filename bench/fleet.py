"""A fleet replay: N daemons sharing one bucket, the Mooncake conversation trace routed across them.

    python -m bench.fleet [--quick] [--nodes 4] [--requests N] [--dram-chunks D] [--nvme-chunks M]
                          [--chunk-bytes 64KiB] [--out DIR]

N real `tierd serve` processes (N = 4 by default), each with its own small DRAM and NVMe, all on
one SeaweedFS bucket on loopback (write-through: every stored chunk is uploaded), replay the
Mooncake conversation trace (../shared/data/traces/mooncake/) at chunk level, as
`bench/trace_replay.py` does for one daemon: each hash id is one chunk (its key and payload are
trace_replay's), and each request is a lookup on the node it is sent to, a get of the leading
present run (promoting from NVMe or the bucket), and a put of the rest. Three configurations,
each with fresh daemons and a fresh prefix of the bucket, on the same requests:

    (i)   random: each request to a node drawn at random (seeded);
    (ii)  route: each request to the node `tierd.route.choose` picks from the Router's scores, the
          nodes read from their KV-event streams (`--kv-events`; `--route-by daemons` asks each
          daemon per request instead) —
          the prefill seconds each node's cached prefix saves, priced with its own tier costs —
          balanced with load: among nodes within 25% of the prompt's recompute time of the best
          saving, the one with the fewest recent requests (without that, a shared system prompt
          draws every request to the first node that cached it);
    (iii) single: one node with N times the DRAM and NVMe (the bound a fleet could reach by
          pooling its memory).

Every daemon publishes KV events (`--kv-events`, in every configuration alike). The router's
cost model uses a Llama-3-8B shape and 1e14 FLOP/s (a GPU's prefill rate; only the order of
savings between nodes matters here), and each node's own tier costs.

Reported per configuration: the prefix hit ratio (leading present chunks / chunks), split by the
tier the chunks came from (local DRAM, local NVMe, the bucket), the bytes read from the bucket,
the lookup latency (p50, p99), and for (ii) the routing time per request. A progress bar per
configuration; a PNG of the hit ratio by configuration and tier (`fleet_hit_ratio.png` in --out).
FIGURE lines: (ii)'s prefix hit ratio against (i)'s and against (iii)'s, same run.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):  # `python bench/fleet.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from bench.trace_replay import (  # noqa: E402
    TRACES, chunk_key, dram_bytes_for, layout_for, load_requests, nvme_bytes_for, put_missing)
from tests.s3server import SeaweedS3  # noqa: E402
from tierd.client import Client  # noqa: E402
from tierd.cost.device import DeviceThroughput  # noqa: E402
from tierd.cost.shape import ModelShape  # noqa: E402
from tierd.daemon.launch import DaemonProcess  # noqa: E402
from tierd.layout import Layout  # noqa: E402
from tierd.route import DaemonNode, EventNode, Router, choose  # noqa: E402
from tierd.sizes import parse_size  # noqa: E402

BUCKET = "fleet"
CONFIGS = ("random", "route", "single")
#: The routing cost model's model: Llama-3-8B's shape, at a GPU's prefill rate.
SHAPE = ModelShape(num_layers=32, hidden_size=4096, num_attention_heads=32, num_kv_heads=8, head_dim=128,
                   intermediate_size=14336, vocab_size=128256)
DEVICE = DeviceThroughput(1e14)
CHUNK_TOKENS = 256  # the layout's tokens per chunk (trace_replay's): a request of n ids is n * 256 tokens
#: Each request's weight in a node's load after one more request anywhere (about the last 50).
LOAD_DECAY = 0.98


@dataclass
class Tally:
    """What one configuration's replay measured."""

    name: str
    requests: int = 0
    chunks: int = 0
    prefix: dict[str, int] = field(default_factory=lambda: {"dram": 0, "nvme": 0, "object": 0})
    lookup_s: list[float] = field(default_factory=list)
    route_s: list[float] = field(default_factory=list)
    bucket_bytes_read: int = 0
    breaker_opened: int = 0  # times a node's object-tier breaker opened (a failing store)
    per_node: dict[str, int] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float:
        return sum(self.prefix.values()) / self.chunks if self.chunks else 0.0

    def share(self, tier: str) -> float:
        return self.prefix[tier] / self.chunks if self.chunks else 0.0


def _daemon(work: Path, name: str, url: str, env: dict[str, str], dram: int, nvme: int) -> DaemonProcess:
    args = ["--dram", str(dram), "--nvme", str(nvme), "--nvme-dir", str(work / f"{name}-nvme"), "--object-url", url,
            "--node-id", name, "--no-calibrate", "--dram-policy", "lru",
            "--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0"]
    return DaemonProcess(work / f"{name}.sock", args, env=env, log_path=work / f"{name}.log").start()


def _event_node(name: str, d: DaemonProcess) -> EventNode:
    """The node as its KV-event stream shows it (endpoints from the daemon's ready line)."""
    m = re.search(r"kv events on (\S+?), replay on (\S+?)[;)]", d.banner)
    if m is None:
        raise RuntimeError(f"no KV-event endpoints in the ready line: {d.banner}")
    return EventNode(name, m[1], m[2], socket=d.socket)


def _request(client: Client, layout: Layout, keys: list[bytes], tally: Tally, batch_len: int) -> None:
    t0 = time.perf_counter()
    hit = client.lookup(keys)
    tally.lookup_s.append(time.perf_counter() - t0)
    names = client.info["tiers"]
    for code in hit.codes[: hit.prefix]:
        tally.prefix[names[code]] += 1
    count = 0
    if hit.prefix:
        with client.get(layout, keys[: hit.prefix]) as lease:
            count = lease.count
    put_missing(client, layout, keys, count, batch_len)
    tally.requests += 1
    tally.chunks += len(keys)


def replay(config: str, requests: Sequence[Sequence[int]], s3: SeaweedS3, work: Path, *, nodes: int,
           dram_chunks: int, nvme_chunks: int, chunk_bytes: int, route_by: str = "events", seed: int = 0) -> Tally:
    """One configuration over `requests`, with fresh daemons on a fresh prefix of the bucket."""
    from tqdm import tqdm

    layout = layout_for(chunk_bytes)
    work = work / config  # its own NVMe directories: a node must not start with another run's chunks
    work.mkdir()
    url = f"s3://{BUCKET}/{config}-{os.urandom(4).hex()}"
    env = {**os.environ, **s3.env()}
    scale = nodes if config == "single" else 1
    names = ["single"] if config == "single" else [f"node{i}" for i in range(nodes)]
    dram, nvme = dram_bytes_for(dram_chunks * scale, chunk_bytes), nvme_bytes_for(nvme_chunks * scale, chunk_bytes)
    daemons = {n: _daemon(work, n, url, env, dram, nvme) for n in names}
    clients = {n: Client.connect(d.socket, name="bench-fleet") for n, d in daemons.items()}
    sources = ([_event_node(n, d) for n, d in daemons.items()] if route_by == "events"
               else [DaemonNode(n, d.socket) for n, d in daemons.items()])
    router = Router(sources, layout, shape=SHAPE, device=DEVICE)
    rng = random.Random(seed)
    tally = Tally(config, per_node={n: 0 for n in names})
    load = {n: 0.0 for n in names}
    batch_len = max(1, dram_chunks * scale // 4)
    try:
        for c in clients.values():
            c.register_layout(layout)
        for ids in tqdm(requests, desc=config, unit="req", dynamic_ncols=True, file=sys.stderr):
            keys = [chunk_key(i) for i in ids]
            if config == "route":
                t0 = time.perf_counter()
                target = choose(router.route_keys(keys, len(keys) * CHUNK_TOKENS), load)
                tally.route_s.append(time.perf_counter() - t0)
            else:
                target = rng.choice(names)
            for n in load:  # recent requests per node, decaying: the router's view of load
                load[n] *= LOAD_DECAY
            load[target] += 1.0
            tally.per_node[target] += 1
            _request(clients[target], layout, keys, tally, batch_len)
        for c in clients.values():
            obj = next(t for t in c.stat()["tiers"] if t["name"] == "object")
            tally.bucket_bytes_read += obj["bytes_out"]
            tally.breaker_opened += obj.get("breaker_opened", 0)
    finally:
        router.close()
        for c in clients.values():
            c.close()
        for d in daemons.values():
            d.stop(timeout=60)
    return tally


def _pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else 0.0


def plot(tallies: Sequence[Tally], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = np.zeros(len(tallies))
    for tier, colour in (("dram", "#2b8cbe"), ("nvme", "#7bccc4"), ("object", "#fdae6b")):
        values = np.array([t.share(tier) for t in tallies])
        ax.bar([t.name for t in tallies], values, bottom=bottom, label=tier, color=colour)
        bottom += values
    ax.set_ylabel("prefix hit ratio")
    ax.set_title("Mooncake conversation trace across the fleet, by tier")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 requests, small capacities (a couple of minutes)")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--requests", type=int, default=None, help="leading requests of the trace (default 3000)")
    ap.add_argument("--dram-chunks", type=int, default=None, help="per node (default 500)")
    ap.add_argument("--nvme-chunks", type=int, default=None, help="per node (default 1000)")
    ap.add_argument("--chunk-bytes", default="64KiB")
    ap.add_argument("--out", default=".", help="where the PNG goes")
    ap.add_argument("--route-by", choices=("events", "daemons"), default="events",
                    help="(ii) reads the nodes' KV-event streams (default), or asks their daemons per request")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes: a fleet needs at least 2")
    requests_n = args.requests or (300 if args.quick else 3000)
    dram_chunks = args.dram_chunks or (100 if args.quick else 500)
    nvme_chunks = args.nvme_chunks if args.nvme_chunks is not None else (200 if args.quick else 1000)
    chunk_bytes = parse_size(args.chunk_bytes, key="--chunk-bytes")
    requests = load_requests(TRACES["conversation"], requests_n)
    print(f"fleet: {args.nodes} nodes x (DRAM {dram_chunks}, NVMe {nvme_chunks} chunks of {args.chunk_bytes}), "
          f"one SeaweedFS bucket; {len(requests)} requests of the conversation trace "
          f"({sum(map(len, requests))} chunk references)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="tdfl-", dir="/tmp"))
    tallies = []
    try:
        for config in CONFIGS:  # a fresh SeaweedFS each: the test server holds 5 GB, about two runs' uploads
            s3 = SeaweedS3(work / f"s3-{config}").start()
            try:
                s3.create_bucket(BUCKET)
                tallies.append(replay(config, requests, s3, work, nodes=args.nodes, dram_chunks=dram_chunks,
                                      nvme_chunks=nvme_chunks, chunk_bytes=chunk_bytes, route_by=args.route_by))
            finally:
                s3.stop()
                shutil.rmtree(work / f"s3-{config}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'config':<8} {'prefix hit':>10} {'dram':>7} {'nvme':>7} {'bucket':>7} {'bucket MiB read':>16} "
          f"{'lookup p50 ms':>14} {'p99 ms':>8} {'route p50 ms':>13} {'breaker':>7}  requests per node")
    for t in tallies:
        print(f"{t.name:<8} {t.hit_ratio:10.4f} {t.share('dram'):7.4f} {t.share('nvme'):7.4f} {t.share('object'):7.4f} "
              f"{t.bucket_bytes_read / 2**20:16.1f} {_pct(t.lookup_s, 50) * 1e3:14.2f} {_pct(t.lookup_s, 99) * 1e3:8.2f} "
              f"{(_pct(t.route_s, 50) * 1e3 if t.route_s else 0):13.2f} {t.breaker_opened:7d}  {list(t.per_node.values())}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(tallies, out / "fleet_hit_ratio.png")
    print(f"\nplot: {out / 'fleet_hit_ratio.png'}\n")
    by = {t.name: t for t in tallies}
    common = {"nodes": args.nodes, "requests": len(requests), "dram_chunks": dram_chunks, "nvme_chunks": nvme_chunks}
    figure("fleet_route_prefix_hit_ratio", by["route"].hit_ratio, "ratio", "random routing", by["random"].hit_ratio,
           **common)
    figure("fleet_route_vs_single_node", by["route"].hit_ratio, "ratio", f"one node with {args.nodes}x capacity",
           by["single"].hit_ratio, **common)
    figure("fleet_route_local_hit_ratio", by["route"].share("dram") + by["route"].share("nvme"), "ratio",
           "random routing, local tiers", by["random"].share("dram") + by["random"].share("nvme"), **common)
    if by["route"].bucket_bytes_read and by["random"].bucket_bytes_read:
        figure("fleet_route_bucket_mib_read", by["route"].bucket_bytes_read / 2**20, "MiB", "random routing",
               by["random"].bucket_bytes_read / 2**20, higher_is_better=False, **common)
    else:
        print(f"bucket bytes read: route {by['route'].bucket_bytes_read}, random {by['random'].bucket_bytes_read} "
              "(no ratio)")
    figure("fleet_route_lookup_p99", _pct(by["route"].lookup_s, 99) * 1e3, "ms", "random routing",
           _pct(by["random"].lookup_s, 99) * 1e3, higher_is_better=False, **common)
    figure("fleet_route_time_p50", _pct(by["route"].route_s, 50) * 1e3, "ms", "lookup p50 (same run)",
           _pct(by["route"].lookup_s, 50) * 1e3, higher_is_better=False, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
