"""KV-event publishing overhead: put throughput of a daemon with `--kv-events` against one without.

    python -m bench.kv_events [--quick]

Two daemons of the same build, started side by side in this run, with the same DRAM tier and no
NVMe; the one with events also has a replay socket and a live subscriber (a SUB socket in a
process of its own, as a router would be), so every batch is really encoded and sent. Each put passes the
chunks' token ids, as the vLLM connector does, to both: what differs is only the publishing.

Each pass puts `--total` of distinct chunks through a DRAM tier half that size, so the second
half of every pass also drops the oldest copies: each chunk costs a BlockStored (with its 256
token ids) and, in steady state, a BlockRemoved. Passes alternate between the two daemons and
the median of each is taken (a shared machine drifts between passes). Each figure also gives
both daemons' own CPU time per chunk put (all threads: the store's loop, the publisher, ZMQ's
I/O thread), which a busy machine disturbs less than wall time. `xN` = N chunks per
reserve/commit pair; small chunks show the per-event cost most, since it does not grow with the
chunk's bytes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.figures import figure
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess
from tierd.keys import chunk_keys
from tierd.layout import Layout

MiB = 1 << 20
CHUNK_TOKENS = 256


def layout_of(chunk_mib: int) -> Layout:
    """A bf16 layout whose chunks are exactly `chunk_mib` MiB."""
    return Layout(f"bench-events-{chunk_mib}m", "bfloat16", chunk_mib, 8, 128, chunk_tokens=CHUNK_TOKENS)


def listen(endpoint: str, stop: Any, batches: Any, nbytes: Any) -> None:
    """A router's SUB socket on the daemon's publisher, counting what arrives; in a process of its
    own, as a router is (a thread here would take the interpreter from the timed client)."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    while not stop.is_set():
        if sub.poll(100):
            _, _, payload = sub.recv_multipart()
            with batches.get_lock():
                batches.value += 1
                nbytes.value += len(payload)
    sub.close(linger=0)
    ctx.term()


class Listener:
    def __init__(self, endpoint: str) -> None:
        mp = multiprocessing.get_context("spawn")
        self.stop, self._batches, self._bytes = mp.Event(), mp.Value("q", 0), mp.Value("q", 0)
        self.proc = mp.Process(target=listen, args=(endpoint, self.stop, self._batches, self._bytes), daemon=True)
        self.proc.start()
        self.baseline_batches = 0  # batches published before the timed passes

    def wait_joined(self, client: Client) -> None:
        """Until the subscription holds (ZMQ's slow joiner loses what is published before): put a
        small chunk now and then until its batch arrives."""
        tiny = Layout("bench-events-join", "bfloat16", 1, 1, 8, chunk_tokens=CHUNK_TOKENS)
        deadline, i = time.monotonic() + 60, 0
        while self.batches == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber received nothing within 60 s")
            key = chunk_keys(tiny, np.arange(i * CHUNK_TOKENS, (i + 1) * CHUNK_TOKENS))
            client.put_chunks(tiny, key, [np.zeros(tiny.chunk_bytes, np.uint8)])
            i += 1
            time.sleep(0.2)
        client.evict(everything=True)
        while (lambda st: st["records_published"] < st["recorded"])(client.stat()["kv_events"]):
            time.sleep(0.01)  # the eviction's batch goes out before the count starts
        time.sleep(0.2)  # and arrives
        with self._batches.get_lock():
            self._batches.value = self._bytes.value = 0
        self.baseline_batches = client.stat()["kv_events"]["batches"]

    @property
    def batches(self) -> int:
        return self._batches.value

    @property
    def bytes(self) -> int:
        return self._bytes.value

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads (the store's loop, the publisher's, ZMQ's I/O thread),
    from each thread's schedstat (nanoseconds, where /proc/PID/stat counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            pass
    return total / 1e9


def put_pass(client: Client, layout: Layout, src: list[np.ndarray], per_rpc: int, base: int) -> float:
    """Seconds to put `src` as distinct chunks of one long prompt starting at token `base`, with
    their token ids and, past the first put, the parent key."""
    n = len(src)
    tokens = np.arange(base, base + n * CHUNK_TOKENS) % 150_000
    keys = chunk_keys(layout, tokens)
    ids = tokens.reshape(n, CHUNK_TOKENS).tolist()
    t0 = time.perf_counter()
    for start in range(0, n, per_rpc):
        with client.put(layout, keys[start : start + per_rpc], first_position=start,
                        tokens=ids[start : start + per_rpc], parent=keys[start - 1] if start else None) as batch:
            for i in batch.reserved:
                np.copyto(batch.view(i), src[start + i])
    return time.perf_counter() - t0


def bench(plain: Client, events: Client, pids: dict[str, int], chunk_mib: int, per_rpc: int, total_mib: int,
          repeats: int, prefix: str = "kv_events_put") -> dict[str, object]:
    """The figure's arguments for puts of `chunk_mib` MiB chunks, `per_rpc` per reserve: GB/s of
    each daemon (median of its passes), and the daemon's own CPU time per chunk put."""
    layout = layout_of(chunk_mib)
    n = max(per_rpc, total_mib // chunk_mib)
    n -= n % per_rpc
    src = [np.full(layout.chunk_bytes, i % 251, dtype=np.uint8) for i in range(n)]
    times: dict[str, list[float]] = {"plain": [], "events": []}
    cpu = {"plain": 0.0, "events": 0.0}
    base = 0
    for r in range(repeats + 1):  # the first pass of each warms up (arena pages, layouts)
        for name, client in (("plain", plain), ("events", events)) if r % 2 == 0 else (("events", events), ("plain", plain)):
            cpu0 = cpu_seconds(pids[name])
            seconds = put_pass(client, layout, src, per_rpc, base)
            if r:
                times[name].append(seconds)
                cpu[name] += cpu_seconds(pids[name]) - cpu0
        base += n * CHUNK_TOKENS
    nbytes = n * layout.chunk_bytes
    with_events = nbytes / statistics.median(times["events"]) / 1e9
    without = nbytes / statistics.median(times["plain"]) / 1e9
    for client in (plain, events):
        client.evict(everything=True)
    per_chunk = {name: round(c / (n * repeats) * 1e6, 1) for name, c in cpu.items()}
    return {"name": f"{prefix}_{chunk_mib}MiB_x{per_rpc}", "value": with_events, "unit": "GB/s",
            "baseline": "put without --kv-events", "baseline_value": without,
            "chunks_per_s": round(n / statistics.median(times["events"])),
            "daemon_cpu_us_per_chunk": per_chunk["events"], "baseline_daemon_cpu_us_per_chunk": per_chunk["plain"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a run under a minute")
    ap.add_argument("--total", default=None, help="MiB put per pass (default: 512; --quick: 256)")
    ap.add_argument("--noise-floor", action="store_true",
                    help="the same run with two daemons WITHOUT events: how far two equal daemons differ here")
    args = ap.parse_args()
    total_mib = int(args.total) if args.total else (256 if args.quick else 512)
    repeats = 3 if args.quick else 7
    tmp = Path(tempfile.mkdtemp(prefix="tdb-ev-", dir="/tmp"))
    listener = None
    try:
        common = ["--dram", f"{total_mib // 2}MiB", "--nvme", "0", "--nvme-dir", str(tmp / "n"), "--no-calibrate"]
        publish = [] if args.noise_floor else ["--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay",
                                               "tcp://127.0.0.1:0"]
        with DaemonProcess(tmp / "p.sock", common) as p, DaemonProcess(tmp / "e.sock", common + publish) as e:
            if args.noise_floor:
                with Client.connect(p.socket) as plain, Client.connect(e.socket) as other:
                    for chunk_mib, per_rpc in ((1, 1), (1, 16), (4, 16)):
                        fig = bench(plain, other, {"plain": p.pid, "events": e.pid}, chunk_mib, per_rpc, total_mib,
                                    repeats, prefix="kv_events_noise_floor")
                        figure(**{**fig, "baseline": "the same daemon, another instance"})  # type: ignore[arg-type]
                return
            endpoint = e.banner.split("kv events on ")[1].split(",")[0]
            listener = Listener(endpoint)
            with Client.connect(p.socket) as plain, Client.connect(e.socket) as events:
                listener.wait_joined(events)
                pids = {"plain": p.pid, "events": e.pid}
                figures = [bench(plain, events, pids, chunk_mib, per_rpc, total_mib, repeats)
                           for chunk_mib, per_rpc in ((1, 1), (1, 16), (4, 16))]
                stat = events.stat()["kv_events"]
                deadline = time.monotonic() + 10
                while listener.batches < stat["batches"] - listener.baseline_batches and time.monotonic() < deadline:
                    time.sleep(0.05)
                stat = events.stat()["kv_events"]
            sent = stat["batches"] - listener.baseline_batches
            print(f"published {stat['events']} events in {stat['batches']} batches "
                  f"({stat['events'] / max(stat['batches'], 1):.1f} per batch), dropped {stat['dropped']}; "
                  f"the subscriber received {listener.batches} of the {sent} batches sent once it had joined, "
                  f"{listener.bytes / MiB:.1f} MiB")
            for fig in figures:
                figure(**fig)  # type: ignore[arg-type]
    finally:
        if listener is not None:
            listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
