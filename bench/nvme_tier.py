"""NVMe tier throughput: NvmeChunkFiles.write / read_into of 4 MiB chunks against dd with O_DIRECT.

Both sides move the same total bytes in 4 MiB units on the same directory in the same run:

    dd if=/dev/zero of=DIR/ddfile bs=4M count=N oflag=direct      (write baseline)
    dd if=DIR/ddfile of=/dev/null bs=4M iflag=direct              (read baseline)

tierd's side writes random payloads from page-aligned slots of an anonymous mapping (as the
shared-memory arena hands them out), one file per chunk, each one durable (xxh3 checksum,
fdatasync, rename, directory fsync), which dd does not do; reads verify header and checksum.
Rounds interleave dd and tierd so machine noise hits both; each figure is the median round.

With O_DIRECT no read is served from the page cache. If the filesystem forces the buffered
fallback, the files are dropped from the page cache (fadvise DONTNEED after fdatasync) before
each read pass, and the output says so.

    python -m bench.nvme_tier [--quick] [--dir DIR] [--threads 4] [--rounds 3] [--io auto|direct|buffered]
"""
from __future__ import annotations

import argparse
from typing import Callable
import json
import mmap
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python bench/nvme_tier.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierd.tiers.nvme.files import NvmeChunkFiles  # noqa: E402

CHUNK = 4 * 1024 * 1024
LAYOUT = "00000000bec40001"
SLOTS = 16


@dataclass(frozen=True, slots=True)
class Config:
    directory: Path
    total_bytes: int
    threads: int
    rounds: int
    direct_io: bool | None

    @property
    def chunks(self) -> int:
        return self.total_bytes // CHUNK


def _dd(args: list[str]) -> float:
    """Run dd, return GB/s from its own byte count and elapsed seconds."""
    proc = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    m = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", proc.stderr, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"cannot parse dd output: {proc.stderr!r}")
    return int(m.group(1)) / float(m.group(2)) / 1e9


def dd_write(cfg: Config) -> float:
    return _dd(["if=/dev/zero", f"of={cfg.directory / 'ddfile'}", "bs=4M", f"count={cfg.chunks}", "oflag=direct"])


def dd_read(cfg: Config) -> float:
    return _dd([f"if={cfg.directory / 'ddfile'}", "of=/dev/null", "bs=4M", "iflag=direct"])


class Bench:
    """tierd's side: a chunk store on the bench directory and an arena of page-aligned slots."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.files = NvmeChunkFiles(cfg.directory / "nvme", direct_io=cfg.direct_io)
        self._src_map = mmap.mmap(-1, SLOTS * CHUNK)
        self._dst_map = mmap.mmap(-1, SLOTS * CHUNK)
        self.src = memoryview(self._src_map)
        self.dst = memoryview(self._dst_map)
        self.src[:] = os.urandom(len(self.src))
        self.free_dst: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(SLOTS):
            self.free_dst.put(i)

    def keys(self, round_no: int) -> list[bytes]:
        return [round_no.to_bytes(4, "little") + i.to_bytes(12, "little") for i in range(self.cfg.chunks)]

    def _write_one(self, i: int, key: bytes) -> None:
        slot = i % SLOTS
        self.files.write(key, LAYOUT, "bench", self.src[slot * CHUNK : (slot + 1) * CHUNK])

    def _read_one(self, key: bytes) -> bool:
        slot = self.free_dst.get()  # a slot no other thread is filling
        try:
            return self.files.read_into(key, self.dst[slot * CHUNK : (slot + 1) * CHUNK],
                                        layout_id=LAYOUT, payload_len=CHUNK)
        finally:
            self.free_dst.put(slot)

    def write(self, keys: list[bytes], threads: int) -> float:
        start = time.perf_counter()
        if threads == 1:
            for i, key in enumerate(keys):
                self._write_one(i, key)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(self._write_one, range(len(keys)), keys))
        return len(keys) * CHUNK / (time.perf_counter() - start) / 1e9

    def read(self, keys: list[bytes], threads: int) -> float:
        if not self.files.direct_io:
            self.drop_page_cache(keys)
        start = time.perf_counter()
        if threads == 1:
            ok = [self._read_one(key) for key in keys]
        else:
            with ThreadPoolExecutor(threads) as pool:
                ok = list(pool.map(self._read_one, keys))
        seconds = time.perf_counter() - start
        if not all(ok):
            raise RuntimeError(f"{ok.count(False)} of {len(keys)} chunks failed verification")
        return len(keys) * CHUNK / seconds / 1e9

    def drop_page_cache(self, keys: list[bytes]) -> None:
        for key in keys:
            fd = os.open(self.files.path_for(key), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def delete(self, keys: list[bytes]) -> None:
        for key in keys:
            self.files.delete(key)


def run(cfg: Config) -> list[dict]:
    bench = Bench(cfg)
    results: dict[str, list[float]] = {name: [] for name in
                                       ("dd_write", "dd_read", "write_seq", "write_par", "read_seq", "read_par")}
    for r in range(cfg.rounds):
        # os.sync() before each timed pass: the filesystem may be mounted with `discard`, and the
        # discards of the previous pass's deleted files then land on the next journal commit --
        # which would be tierd's first fdatasync, never dd's (it does not sync).
        os.sync()
        results["dd_write"].append(dd_write(cfg))
        os.sync()
        results["dd_read"].append(dd_read(cfg))
        os.unlink(cfg.directory / "ddfile")
        for threads, tag in ((1, "seq"), (cfg.threads, "par")):
            keys = bench.keys(r * 2 + (threads > 1))
            os.sync()
            results[f"write_{tag}"].append(bench.write(keys, threads))
            os.sync()
            results[f"read_{tag}"].append(bench.read(keys, threads))
            bench.delete(keys)
        print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} GB/s" for k, v in results.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    mode = "O_DIRECT" if bench.files.direct_io else "buffered, page cache dropped before reads"
    print(f"tierd I/O mode: {mode}; {cfg.chunks} x 4 MiB = {cfg.total_bytes / 2**20:.0f} MiB per pass, "
          f"{cfg.rounds} rounds, medians")
    figures = []
    for name, key, base, base_key in (
        ("nvme_write_4MiB_seq", "write_seq", "dd oflag=direct", "dd_write"),
        (f"nvme_write_4MiB_{cfg.threads}threads", "write_par", "dd oflag=direct", "dd_write"),
        ("nvme_read_4MiB_seq", "read_seq", "dd iflag=direct", "dd_read"),
        (f"nvme_read_4MiB_{cfg.threads}threads", "read_par", "dd iflag=direct", "dd_read"),
    ):
        figures.append({"name": name, "value": round(med[key], 3), "unit": "GB/s", "baseline": base,
                        "baseline_value": round(med[base_key], 3), "ratio": round(med[key] / med[base_key], 3)})
    return figures


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The options both NVMe benchmarks take (this one and bench.encryption)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="256 MiB per pass instead of 1 GiB")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory on the disk to measure (default: a temp dir under the current directory)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--io", choices=("auto", "direct", "buffered"), default="auto",
                        help="tierd's I/O mode: probe O_DIRECT (default), insist on it, or force the buffered fallback")
    return parser.parse_args(argv)


def run_in_temp_dir(args: argparse.Namespace, prefix: str, body: Callable[[Config], list[dict]]) -> int:
    """Run `body` on a Config for a fresh directory under --dir (removed afterwards); print its
    figures as FIGURE lines."""
    parent = args.dir if args.dir is not None else Path.cwd()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        cfg = Config(directory=work, total_bytes=(256 if args.quick else 1024) * 2**20,
                     threads=args.threads, rounds=args.rounds,
                     direct_io={"auto": None, "direct": True, "buffered": False}[args.io])
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1].split()
        print(f"directory {work} on {fs[0]} ({fs[1]}); {os.cpu_count()} CPUs", flush=True)
        figures = body(cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for fig in figures:
        print("FIGURE " + json.dumps(fig))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_in_temp_dir(parse_args(argv, __doc__.splitlines()[0]), ".tierd-bench-nvme-", run)


if __name__ == "__main__":
    raise SystemExit(main())
