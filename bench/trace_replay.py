"""Mooncake trace replay through a running daemon: measured hit ratios next to the estimators.

    python -m bench.trace_replay [--quick] [--trace conversation|synthetic|PATH] [--chunk-bytes 64KiB]
                                 [--dram-chunks N] [--nvme-chunks N] [--requests N]
                                 [--high-watermark F --low-watermark F] [--dir DIR] [--no-mrc-throughput]
                                 [--dram-policy P] [--nvme-policy P] [--nvme-admission all|reuse]

A real `tierd serve` subprocess gets DRAM and NVMe capacities counted in chunks of a scaled-down
chunk size (64 KiB by default instead of a real 512-token KV block): DRAM is exactly
`dram_chunks` arena slots (slots are 4 KiB aligned), NVMe exactly `nvme_chunks` chunk files
(`NvmeChunkFiles.file_bytes_for`: a 4 KiB header plus the payload rounded up to 4 KiB).

Each Mooncake `hash_id` is one chunk: key = blake2b-128 of the id's 8-byte little-endian
encoding (ids are already prefix-chained, so no further chaining), payload = the key repeated
to the chunk size. Each request is replayed as an engine would: `lookup(keys)`; `get` (acquire
+ release) of the leading present run; `put` (reserve + copy + commit) of the keys after what
the get leased (reserve skips keys already stored). Every 16th get is checked byte for byte
against the payload its key must hold.

Measured, from the lookups' tier codes: block-level hit ratio per tier (chunks found in DRAM /
NVMe among all chunk references, present anywhere in the request), the prefix hit ratio (the
leading present run), the served hit ratio (chunks the gets really leased: a promotion that
finds no DRAM slot within the store's 5 s deadline is a miss), lookups/s (the lookup RPCs
alone) and requests/s (the whole request). Baselines from the same run:

- exact LRU (`tierd.mrc.exact.stack_distances`) on the same requests, at the DRAM capacity for the
  DRAM hit ratio and at DRAM + NVMe capacity for the DRAM+NVMe one (DRAM demotes its least
  recently used chunks to NVMe, so the two behave close to one LRU of the summed capacity);
- the daemon's own live SHARDS estimate (`mrc` RPC), at the same capacities;
- an empty `ping` RPC, timed once per request interleaved with the lookups, for lookups/s.

Where tierd departs from a pure LRU (the table prints what is needed to read the ratios):

- DRAM is used to the last slot: the demoter writes the coldest chunks down once the bytes not
  yet written pass the high watermark (0.95), keeping their DRAM copies, and a put that needs
  room drops clean ones at once; with `--nvme-chunks 0` chunks leave DRAM only on demand. (The
  code before issue 22 dropped DRAM to the low watermark ahead of need; the table still gives
  exact LRU over that band for comparison.)
- with `--dram-policy` other than lru, DRAM is not an LRU and the exact-LRU columns are a
  baseline, not a prediction.
- a chunk promoted from NVMe keeps its NVMe copy; chunks held in both tiers ("in both") take
  room twice, so DRAM+NVMe holds fewer distinct chunks than its summed capacity.
- the daemon's own per-tier view in the `mrc` report counts NVMe capacity in blocks as
  capacity_bytes / chunk_bytes, ignoring the 4 KiB file header, so it overstates NVMe (by 6%
  at 64 KiB chunks); the live figures here read its curve at the true capacities instead.

The full run (12,031 requests, 5k chunks of DRAM) takes tens of minutes on 2 shared cores;
--quick takes ~20 s.

The offline estimator throughput (exact and SHARDS, references/s) is `bench.mrc_throughput`,
run as a subprocess on the same trace; its FIGURE lines are passed through with ours.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

if __package__ in (None, ""):  # `python bench/trace_replay.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from tierd.client import Client  # noqa: E402
from tierd.errors import NotFoundError  # noqa: E402
from tierd.daemon.launch import DaemonProcess  # noqa: E402
from tierd.layout import Layout  # noqa: E402
from tierd.mrc.curve import hit_ratios  # noqa: E402
from tierd.mrc.exact import running_max_by_request, stack_distances  # noqa: E402
from tierd.mrc.traces import read_mooncake  # noqa: E402
from tierd.sizes import format_size, parse_size  # noqa: E402
from tierd.tiers.nvme.files import NvmeChunkFiles  # noqa: E402

TRACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"
TRACES = {"conversation": TRACE_DIR / "conversation_trace.jsonl", "synthetic": TRACE_DIR / "synthetic_trace.jsonl"}

#: Full-run capacities (trace README: exact LRU on the conversation trace gets about 0.110 at
#: 5k blocks and 0.287 at 20k): DRAM 5k chunks, DRAM + NVMe 20k chunks.
DRAM_CHUNKS = 5_000
NVME_CHUNKS = 15_000
#: --quick: the first 600 requests with DRAM 1k and DRAM + NVMe 5k chunks (exact LRU there: about
#: 0.039 and 0.089). Not scaled by the share of references replayed (5%): the trace's reuse
#: distances are absolute (a conversation comes back thousands of blocks later), so a prefix of
#: the trace has about the same curve as the whole at small capacities, and 250 / 1000 chunks
#: would both sit on its flat start (0.036 / 0.039), where the NVMe tier adds nothing.
QUICK_REQUESTS = 600
QUICK_DRAM_CHUNKS = 1_000
QUICK_NVME_CHUNKS = 4_000
#: Arena slots are aligned to this (tierd.tiers.allocator.ExtentAllocator default).
ARENA_ALIGN = 4096
#: Every VERIFY_EVERY-th request's get is compared byte for byte with the expected payloads.
VERIFY_EVERY = 16
KEY_BYTES = 16


# --------------------------------------------------------------------------- mapping


def chunk_key(hash_id: int) -> bytes:
    """The 16-byte chunk key of a Mooncake hash id: blake2b-128 of its 8-byte LE encoding."""
    return hashlib.blake2b(int(hash_id).to_bytes(8, "little"), digest_size=KEY_BYTES).digest()


def payload_for(key: bytes, chunk_bytes: int) -> np.ndarray:
    """The synthetic bytes a chunk holds: its key repeated to `chunk_bytes`."""
    return np.frombuffer(key * (chunk_bytes // KEY_BYTES), dtype=np.uint8)


def layout_for(chunk_bytes: int) -> Layout:
    """A uint8 layout of exactly `chunk_bytes` per chunk: 1 layer x (K, V) x 256 tokens x 1 head
    x head_dim, so chunk_bytes must be a multiple of 512."""
    if chunk_bytes < 512 or chunk_bytes % 512:
        raise ValueError(f"chunk size {chunk_bytes}: use a multiple of 512 bytes, e.g. 64KiB")
    layout = Layout("trace-replay", "uint8", 1, 1, chunk_bytes // 512, chunk_tokens=256)
    assert layout.chunk_bytes == chunk_bytes
    return layout


def dram_bytes_for(chunks: int, chunk_bytes: int) -> int:
    """Arena size holding exactly `chunks` slots of `chunk_bytes` (each rounded up to 4 KiB)."""
    return chunks * (-(-chunk_bytes // ARENA_ALIGN) * ARENA_ALIGN)


def nvme_bytes_for(chunks: int, chunk_bytes: int) -> int:
    """NVMe capacity holding exactly `chunks` chunk files of a `chunk_bytes` payload."""
    return chunks * NvmeChunkFiles.file_bytes_for(chunk_bytes)


def resolve_trace(name: str) -> Path:
    return TRACES.get(name, Path(name))


def load_requests(path: Path, limit: int | None) -> list[list[int]]:
    """The hash-id lists of the first `limit` requests (all if None)."""
    out: list[list[int]] = []
    for req in read_mooncake(path):
        if limit is not None and len(out) >= limit:
            break
        out.append(req.keys)
    return out


# --------------------------------------------------------------------------- setup and results


@dataclass(frozen=True, slots=True)
class ReplaySetup:
    """What to replay and with which daemon."""

    trace: Path
    requests: int | None  # leading requests to replay; None = all
    chunk_bytes: int
    dram_chunks: int
    nvme_chunks: int
    high_watermark: float = 0.95  # the daemon's defaults
    low_watermark: float = 0.85
    verify_every: int = VERIFY_EVERY
    mrc_sample_rate: float = 0.01  # the daemon's online curve: the share of keys it samples at first
    #: None: the daemon's default (flags are passed only when set, so older daemons run too)
    dram_policy: str | None = None
    nvme_policy: str | None = None
    nvme_admission: str | None = None

    def daemon_args(self, nvme_dir: Path) -> list[str]:
        return ["--dram", str(dram_bytes_for(self.dram_chunks, self.chunk_bytes)),
                "--nvme", str(nvme_bytes_for(self.nvme_chunks, self.chunk_bytes)), "--nvme-dir", str(nvme_dir),
                "--demote-high-watermark", str(self.high_watermark),
                "--demote-low-watermark", str(self.low_watermark), "--no-calibrate",
                "--mrc-sample-rate", str(self.mrc_sample_rate)] + self.policy_args()

    def policy_args(self) -> list[str]:
        """The policy flags that were set (so the bench runs daemons older than the flags too)."""
        args: list[str] = []
        for flag, value in (("--dram-policy", self.dram_policy), ("--nvme-policy", self.nvme_policy),
                            ("--nvme-admission", self.nvme_admission)):
            if value is not None:
                args += [flag, value]
        return args

    @property
    def total_chunks(self) -> int:
        return self.dram_chunks + self.nvme_chunks


@dataclass(slots=True)
class Counts:
    """What the replay saw, per chunk reference unless named otherwise."""

    requests: int = 0
    references: int = 0
    dram_hits: int = 0  # block level: present in DRAM, anywhere in the request
    nvme_hits: int = 0  # block level: present only on NVMe
    prefix_hits: int = 0  # in the leading present run
    prefix_dram: int = 0
    prefix_nvme: int = 0
    leased: int = 0  # chunks the gets actually leased (prefix hits that could be served)
    lost_evicted: int = 0  # prefix hits gone by the get (evicted between lookup and acquire)
    lost_other: int = 0  # prefix hits still stored but not leased (no DRAM slot for a promotion)
    put: int = 0  # chunks reserved, written and committed
    put_no_room: int = 0  # absent at lookup, but no slot was granted (not cached)
    verified: int = 0  # chunks compared byte for byte
    mismatched: int = 0
    lookup_s: float = 0.0  # lookup RPCs only
    ping_s: float = 0.0  # one ping RPC per request, interleaved
    request_s: float = 0.0  # whole requests: lookup + get + put (no ping, no verification)


@dataclass(slots=True)
class ReplayReport:
    setup: ReplaySetup
    counts: Counts
    exact: dict[int, float]  # exact block-level LRU hit ratio by capacity (chunks)
    exact_prefix: dict[int, float]  # exact prefix-level LRU hit ratio by capacity
    exact_s: float  # seconds for the offline exact curve (stack distances + hit ratios)
    live: dict[str, Any]  # the daemon's `mrc` report
    stat: dict[str, Any]  # the daemon's `stat` after the replay
    mrc_throughput_lines: list[str] = field(default_factory=list)

    def ratio(self, hits: int) -> float:
        return hits / self.counts.references if self.counts.references else 0.0

    @property
    def dram_hit_ratio(self) -> float:
        return self.ratio(self.counts.dram_hits)

    @property
    def total_hit_ratio(self) -> float:
        return self.ratio(self.counts.dram_hits + self.counts.nvme_hits)

    @property
    def prefix_hit_ratio(self) -> float:
        return self.ratio(self.counts.prefix_hits)

    @property
    def served_hit_ratio(self) -> float:
        """Chunks the gets actually leased: the prefix hits an engine could load."""
        return self.ratio(self.counts.leased)

    def live_at(self, capacity: int, *, prefix: bool = False) -> float:
        curve = self.live["prefix_shards" if prefix else "shards"]
        return float(dict((int(c), h) for c, h in curve)[capacity])

    @property
    def lookups_per_s(self) -> float:
        return self.counts.requests / self.counts.lookup_s

    @property
    def pings_per_s(self) -> float:
        return self.counts.requests / self.counts.ping_s

    @property
    def requests_per_s(self) -> float:
        return self.counts.requests / self.counts.request_s

    def tier(self, name: str) -> dict[str, Any]:
        """A tier's `stat` row (all zeros for a tier the daemon runs without: `--nvme-chunks 0`)."""
        return next((t for t in self.stat["tiers"] if t["name"] == name),
                    {"chunks": 0, "hits": 0, "evictions": 0, "demotions": 0, "promotions": 0})

    @property
    def distinct_held(self) -> int:
        """Distinct chunks stored at the end; less than the summed capacity by the chunks
        that have a copy in both tiers, and by DRAM's headroom under the watermarks."""
        return int(self.stat["chunks"])


# --------------------------------------------------------------------------- the replay


def exact_lru(requests: Sequence[Sequence[int]],
              capacities: Sequence[int]) -> tuple[dict[int, float], dict[int, float], float]:
    """Exact block- and prefix-level LRU hit ratios at `capacities` (chunks), and the seconds
    the offline computation took."""
    t0 = time.perf_counter()
    keys = np.fromiter((k for r in requests for k in r), dtype=np.int64)
    request_index = np.repeat(np.arange(len(requests), dtype=np.int64), [len(r) for r in requests])
    dist = stack_distances(keys)
    block = hit_ratios(dist, capacities)
    prefix = hit_ratios(running_max_by_request(dist, request_index), capacities)
    seconds = time.perf_counter() - t0
    caps = [int(c) for c in capacities]
    return dict(zip(caps, block.tolist())), dict(zip(caps, prefix.tolist())), seconds


def put_missing(client: Client, layout: Layout, keys: Sequence[bytes], count: int,
                batch_len: int) -> list[tuple[int, list[int | None]]]:
    """Put keys[count:] with their payloads, `batch_len` keys per reserve (reserve skips keys
    already stored); (index of the batch's first key, its slots) per batch."""
    out = []
    for start in range(count, len(keys), batch_len):
        part = keys[start : start + batch_len]
        with client.put(layout, part, first_position=start) as batch:
            for i in batch.reserved:
                np.copyto(batch.view(i), payload_for(part[i], layout.chunk_bytes))
            out.append((start, list(batch.slots)))
    return out


def _replay_request(client: Client, layout: Layout, ids: Sequence[int], c: Counts, verify: bool,
                    batch_len: int) -> None:
    """One request as an engine issues it; updates `c`."""
    keys = [chunk_key(i) for i in ids]
    t_start = time.perf_counter()
    hit = client.lookup(keys)
    t_lookup = time.perf_counter() - t_start
    codes, prefix = hit.codes, hit.prefix
    count = 0
    if prefix:
        with client.get(layout, keys[:prefix]) as lease:
            count = lease.count
            if verify:
                t_verify = time.perf_counter()
                for i in range(count):
                    c.verified += 1
                    c.mismatched += not np.array_equal(lease.view(i), payload_for(keys[i], layout.chunk_bytes))
                t_start += time.perf_counter() - t_verify  # keep verification out of the request time
    # An engine recomputes everything after what it could load, and saves what is missing: the
    # keys after the leased run (reserve skips the ones already stored).
    for start, slots in put_missing(client, layout, keys, count, batch_len):
        c.put += sum(s is not None for s in slots)
        c.put_no_room += sum(1 for i, s in enumerate(slots) if s is None and codes[start + i] == 255)
    c.request_s += time.perf_counter() - t_start
    if count < prefix:  # present at the lookup, not served by the get: find out why (no lookup:
        try:            # that would feed the daemon's curve)
            client.inspect(keys[count])
            c.lost_other += prefix - count
        except NotFoundError:
            c.lost_evicted += prefix - count
    c.lookup_s += t_lookup
    t0 = time.perf_counter()
    client._call("ping")
    c.ping_s += time.perf_counter() - t0
    c.requests += 1
    c.references += len(keys)
    c.dram_hits += codes.count(0)
    c.nvme_hits += codes.count(1)
    c.prefix_hits += prefix
    c.prefix_dram += codes[:prefix].count(0)
    c.prefix_nvme += codes[:prefix].count(1)
    c.leased += count


def replay(setup: ReplaySetup, *, workdir: Path | None = None, progress: bool = False) -> ReplayReport:
    """Start a daemon with `setup`'s capacities, replay the trace through it, stop it, and
    return the measured counts next to the exact and live estimates."""
    requests = load_requests(setup.trace, setup.requests)
    if not requests:
        raise ValueError(f"trace {setup.trace}: no requests to replay")
    batch_len = max(1, setup.dram_chunks // 4)  # a put never needs more than a quarter of DRAM
    layout = layout_for(setup.chunk_bytes)
    capacities = sorted({setup.dram_chunks, setup.total_chunks,
                         int(setup.dram_chunks * setup.low_watermark), int(setup.dram_chunks * setup.high_watermark),
                         int(setup.dram_chunks * setup.low_watermark) + setup.nvme_chunks,
                         int(setup.dram_chunks * setup.high_watermark) + setup.nvme_chunks} - {0})
    base = Path(tempfile.mkdtemp(prefix="tdtr-", dir=workdir))  # NVMe chunk files: on disk
    sock = Path(tempfile.mkdtemp(prefix="tdtr-", dir="/tmp"))  # short path for the socket
    counts = Counts()
    try:
        with DaemonProcess(sock / "s.sock", setup.daemon_args(base / "nvme"), log_path=base / "daemon.log") as d:
            with Client.connect(d.socket) as client:
                assert client.info["tiers"][:2] == ["dram", "nvme"][: 2 if setup.nvme_chunks else 1], client.info["tiers"]
                client.register_layout(layout)
                report_every = max(1, len(requests) // 10)
                for n, ids in enumerate(requests):
                    _replay_request(client, layout, ids, counts, n % setup.verify_every == 0, batch_len)
                    if progress and (n + 1) % report_every == 0:
                        print(f"  {n + 1}/{len(requests)} requests, {counts.request_s:.1f} s", file=sys.stderr, flush=True)
                live = client._call("mrc", grid=capacities)
                stat = client.stat()
                client.evict(everything=True)  # nothing left to write down at shutdown
            status = d.stop()
            if status != 0:
                raise RuntimeError(f"tierd exited with {status}:\n{d.log()[-2000:]}")
    finally:
        shutil.rmtree(sock, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    exact, exact_prefix, exact_s = exact_lru(requests, capacities)
    if counts.mismatched:
        raise AssertionError(f"{counts.mismatched} of {counts.verified} chunks read back differ from what was put")
    return ReplayReport(setup, counts, exact, exact_prefix, exact_s, live, stat)


def run_mrc_throughput(trace: Path, quick: bool) -> list[str]:
    """`bench.mrc_throughput` on the same trace (offline exact and SHARDS references/s); its
    output lines, FIGURE lines included."""
    cmd = [sys.executable, "-m", "bench.mrc_throughput", "--trace", str(trace), *(["--quick"] if quick else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return r.stdout.splitlines()


# --------------------------------------------------------------------------- output


def print_table(rep: ReplayReport) -> None:
    s, c = rep.setup, rep.counts
    d, t = s.dram_chunks, s.total_chunks
    lo, hi = int(d * s.low_watermark), int(d * s.high_watermark)
    print(f"trace {s.trace.name}: {c.requests} requests, {c.references} chunk references, "
          f"chunk {format_size(s.chunk_bytes)}")
    print(f"daemon: DRAM {d} chunks ({format_size(dram_bytes_for(d, s.chunk_bytes))}), "
          f"NVMe {s.nvme_chunks} chunks ({format_size(nvme_bytes_for(s.nvme_chunks, s.chunk_bytes))}), "
          f"demotion watermarks {s.high_watermark}/{s.low_watermark}, policies {s.dram_policy or 'default'}/"
          f"{s.nvme_policy or 'default'}, NVMe admission {s.nvme_admission or 'default'}")
    print()
    print(f"{'hit ratio (per chunk reference)':34s} {'measured':>9s} {'exact LRU':>10s} {'live SHARDS':>12s}")
    print(f"{'DRAM (block level) @' + str(d):34s} {rep.dram_hit_ratio:9.4f} {rep.exact[d]:10.4f} {rep.live_at(d):12.4f}")
    print(f"{'NVMe only (block level)':34s} {rep.ratio(c.nvme_hits):9.4f} {rep.exact[t] - rep.exact[d]:10.4f} "
          f"{rep.live_at(t) - rep.live_at(d):12.4f}")
    print(f"{'DRAM+NVMe (block level) @' + str(t):34s} {rep.total_hit_ratio:9.4f} {rep.exact[t]:10.4f} {rep.live_at(t):12.4f}")
    print(f"{'DRAM+NVMe prefix @' + str(t):34s} {rep.prefix_hit_ratio:9.4f} {rep.exact_prefix[t]:10.4f} "
          f"{rep.live_at(t, prefix=True):12.4f}")
    print(f"{'DRAM+NVMe prefix, served by get':34s} {rep.served_hit_ratio:9.4f} {rep.exact_prefix[t]:10.4f}")
    print(f"{'  of which DRAM / NVMe':34s} {rep.ratio(c.prefix_dram):9.4f} / {rep.ratio(c.prefix_nvme):.4f}")
    print()
    print(f"exact LRU over DRAM's watermark band {lo}..{hi} chunks: {rep.exact[lo]:.4f}..{rep.exact[hi]:.4f}; "
          f"DRAM+NVMe {lo + s.nvme_chunks}..{hi + s.nvme_chunks}: "
          f"{rep.exact[lo + s.nvme_chunks]:.4f}..{rep.exact[hi + s.nvme_chunks]:.4f}")
    dram, nvme = rep.tier("dram"), rep.tier("nvme")
    both = dram["chunks"] + nvme["chunks"] - rep.distinct_held
    print(f"held at the end: DRAM {dram['chunks']}, NVMe {nvme['chunks']}, in both {both}, "
          f"distinct {rep.distinct_held} of {t}")
    print(f"daemon counters (leading run + first miss): DRAM hits {dram['hits']} (replay: {c.prefix_dram}), "
          f"NVMe hits {nvme['hits']} (replay: {c.prefix_nvme}); demotions {dram['demotions']}, "
          f"promotions {dram['promotions']}, NVMe evictions {nvme['evictions']}")
    live_tiers = ", ".join(f"{x['name']} @{x['cumulative_blocks']} blocks {x['hit_ratio']:.4f}" for x in rep.live["tiers"])
    print(f"live SHARDS: rate {rep.live['sample_rate']:.4f}, {rep.live['sampled_references']} sampled of "
          f"{rep.live['references']} references, {rep.live['dropped_requests']} lookups dropped; "
          f"its own tier view: {live_tiers}")
    print(f"gets leased {c.leased} of {c.prefix_hits} prefix hits (lost: evicted before the get {c.lost_evicted}, "
          f"other {c.lost_other}); puts {c.put}, not cached for lack of room "
          f"{c.put_no_room}; {c.verified} chunks read back byte-identical")
    print(f"lookups {rep.lookups_per_s:,.0f}/s ({c.references / c.requests:.1f} chunks each), ping {rep.pings_per_s:,.0f}/s, "
          f"whole requests {rep.requests_per_s:,.0f}/s; exact LRU offline {c.references / rep.exact_s / 1e6:.2f} M refs/s")


def print_figures(rep: ReplayReport) -> None:
    s = rep.setup
    d, t = s.dram_chunks, s.total_chunks
    tag = {"trace": s.trace.stem.removesuffix("_trace"), "requests": rep.counts.requests, "dram_policy": s.dram_policy or "default",
           "references": rep.counts.references}
    figure("trace_replay_dram_hit_ratio", rep.dram_hit_ratio, "hit ratio", f"exact LRU @{d} chunks", rep.exact[d],
           capacity_chunks=d, **tag)
    figure("trace_replay_dram_nvme_hit_ratio", rep.total_hit_ratio, "hit ratio", f"exact LRU @{t} chunks",
           rep.exact[t], capacity_chunks=t, **tag)
    figure("trace_replay_prefix_hit_ratio", rep.prefix_hit_ratio, "hit ratio", f"exact prefix LRU @{t} chunks",
           rep.exact_prefix[t], capacity_chunks=t, **tag)
    figure("trace_replay_served_hit_ratio", rep.served_hit_ratio, "hit ratio", f"exact prefix LRU @{t} chunks",
           rep.exact_prefix[t], capacity_chunks=t, **tag)
    figure("trace_replay_dram_hit_ratio_vs_live", rep.dram_hit_ratio, "hit ratio", f"live SHARDS @{d} chunks",
           rep.live_at(d), capacity_chunks=d, **tag)
    figure("trace_replay_dram_nvme_hit_ratio_vs_live", rep.total_hit_ratio, "hit ratio",
           f"live SHARDS @{t} chunks", rep.live_at(t), capacity_chunks=t, **tag)
    figure("trace_replay_lookups_per_s", rep.lookups_per_s, "lookups/s", "empty ping RPC", rep.pings_per_s,
           chunks_per_lookup=round(rep.counts.references / rep.counts.requests, 1), **tag)
    figure("trace_replay_requests_per_s", rep.requests_per_s, "requests/s", "lookup RPC alone", rep.lookups_per_s,
           chunk_bytes=s.chunk_bytes, **tag)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"first {QUICK_REQUESTS} requests, DRAM {QUICK_DRAM_CHUNKS} and NVMe {QUICK_NVME_CHUNKS} chunks")
    ap.add_argument("--trace", default="conversation", help="conversation, synthetic, or a Mooncake JSONL path")
    ap.add_argument("--chunk-bytes", default="64KiB", help="bytes per chunk (a multiple of 512)")
    ap.add_argument("--dram-chunks", type=int, default=None, help=f"DRAM capacity in chunks (default {DRAM_CHUNKS})")
    ap.add_argument("--nvme-chunks", type=int, default=None, help=f"NVMe capacity in chunks (default {NVME_CHUNKS})")
    ap.add_argument("--requests", type=int, default=None, help="replay the first N requests (default: all)")
    ap.add_argument("--high-watermark", type=float, default=0.95, help="daemon's --demote-high-watermark")
    ap.add_argument("--low-watermark", type=float, default=0.85, help="daemon's --demote-low-watermark")
    ap.add_argument("--dir", type=Path, default=None, help="where the NVMe chunk files go (default: the temp dir)")
    ap.add_argument("--dram-policy", default=None, help="daemon's --dram-policy (default: the daemon's)")
    ap.add_argument("--nvme-policy", default=None, help="daemon's --nvme-policy (default: the daemon's)")
    ap.add_argument("--nvme-admission", default=None, help="daemon's --nvme-admission (default: the daemon's)")
    ap.add_argument("--no-mrc-throughput", action="store_true", help="skip bench.mrc_throughput")
    args = ap.parse_args(argv)

    trace = resolve_trace(args.trace)
    chunk_bytes = parse_size(args.chunk_bytes, key="--chunk-bytes")
    limit = args.requests if args.requests is not None else (QUICK_REQUESTS if args.quick else None)
    dram = args.dram_chunks if args.dram_chunks is not None else (QUICK_DRAM_CHUNKS if args.quick else DRAM_CHUNKS)
    nvme = args.nvme_chunks if args.nvme_chunks is not None else (QUICK_NVME_CHUNKS if args.quick else NVME_CHUNKS)
    setup = ReplaySetup(trace, limit, chunk_bytes, dram, nvme, args.high_watermark, args.low_watermark,
                        dram_policy=args.dram_policy, nvme_policy=args.nvme_policy, nvme_admission=args.nvme_admission)
    os.sync()
    rep = replay(setup, workdir=args.dir, progress=True)
    if not args.no_mrc_throughput:
        rep.mrc_throughput_lines = run_mrc_throughput(trace, args.quick)
    print_table(rep)
    figures = [line for line in rep.mrc_throughput_lines if line.startswith("FIGURE ")]
    if rep.mrc_throughput_lines:
        print("\nbench.mrc_throughput on the same trace:")
        for line in rep.mrc_throughput_lines:
            if not line.startswith("FIGURE "):
                print("  " + line)
    print()
    print_figures(rep)
    for line in figures:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
