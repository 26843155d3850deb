"""NVMe tier through the daemon: write-back (demotion) and promotion throughput vs dd.

    python -m bench.daemon_nvme [--quick] [--dir DIR]

Write: chunks are put into DRAM, then `evict --tier dram` writes every one of them down to
NVMe (the daemon's write-back path: O_DIRECT, fdatasync, rename, io-threads in parallel); timed
from the evict call until it returns, when every copy is durable. Read: a get of all chunks,
each promoted from NVMe into the arena and verified (checksum), timed per batch of 16. The
baselines are `dd bs=4M oflag=direct` and `dd bs=4M iflag=direct` of the same number of bytes
in the same directory, run in the same process right before.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.figures import figure
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout

MiB = 1 << 20


def dd_gbs(args: list[str]) -> float:
    r = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr)
    assert m, r.stderr
    return int(m.group(1)) / float(m.group(2)) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir here)")
    args = ap.parse_args()
    total_mib = 256 if args.quick else 1024
    base = Path(tempfile.mkdtemp(prefix="tdnv-", dir=args.dir or os.getcwd()))
    sock = Path(tempfile.mkdtemp(prefix="tdns-", dir="/tmp"))
    layout = Layout("bench-4m", "bfloat16", 4, 8, 128, chunk_tokens=256)  # 4 MiB chunks
    n = total_mib * MiB // layout.chunk_bytes
    try:
        ddfile = base / "ddfile"
        os.sync()
        dd_w = dd_gbs(["if=/dev/zero", f"of={ddfile}", "bs=4M", f"count={n}", "oflag=direct"])
        dd_r = dd_gbs([f"if={ddfile}", "of=/dev/null", "bs=4M", "iflag=direct"])
        ddfile.unlink()
        os.sync()
        daemon_args = ["--dram", f"{2 * total_mib + 64}MiB", "--nvme-dir", str(base / "nvme"), "--nvme", f"{4 * total_mib}MiB"]
        with DaemonProcess(sock / "s.sock", daemon_args) as d, Client.connect(d.socket) as c:
            keys = chunk_keys(layout, np.arange(n * 256))
            rng = np.random.default_rng(0)
            c.put_chunks(layout, keys, [rng.integers(0, 256, layout.chunk_bytes, dtype=np.uint8) for _ in keys])
            t0 = time.perf_counter()
            out = c.evict(everything=True, tier="dram")
            t_write = time.perf_counter() - t0
            assert out["evicted"] == n, out
            assert c.lookup(keys).tiers == ["nvme"] * n
            t0 = time.perf_counter()
            for start in range(0, n, 16):
                with c.get(layout, keys[start : start + 16]) as lease:
                    assert lease.count == len(keys[start : start + 16])
            t_read = time.perf_counter() - t0
        nbytes = n * layout.chunk_bytes
        figure("daemon_nvme_writeback_4MiB", nbytes / t_write / 1e9, "GB/s", "dd oflag=direct", dd_w)
        figure("daemon_nvme_promote_4MiB", nbytes / t_read / 1e9, "GB/s", "dd iflag=direct", dd_r)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sock, ignore_errors=True)


if __name__ == "__main__":
    main()
