"""Puts of a namespace over its quota while another namespace fills DRAM, against puts of a
namespace with no quota, in the same daemon and run.

    python -m bench.quota_puts [--others N]

A namespace over its quota makes room from its own oldest chunk (tierd/quotas.py). Finding that
chunk must not cost a walk over every other namespace's chunks: the tier's LRU keeps a
per-namespace order (tierd/policies/lru.py). The figure's ratio is near 1 when a put over quota
costs what an ordinary put costs, however many chunks the other namespace holds.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.figures import figure
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout

LAYOUT = Layout("quota-bench", "bfloat16", 1, 1, 8, chunk_tokens=16)  # 512-byte chunks: many in little DRAM
PUTS = 500
QUOTA_CHUNKS = 8


def puts_per_second(c: Client, namespace: str, seed: int) -> float:
    """`PUTS` one-chunk puts (after 100 to get past the quota), per second."""
    keys = chunk_keys(LAYOUT, np.arange(LAYOUT.chunk_tokens * (PUTS + 100)) + seed, namespace=namespace)
    blob = np.zeros(LAYOUT.chunk_bytes, np.uint8)
    c.put_chunks(LAYOUT, keys[:100], [blob] * 100, namespace=namespace)
    t0 = time.perf_counter()
    for k in keys[100:]:
        c.put_chunks(LAYOUT, [k], [blob], namespace=namespace)
    return PUTS / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--others", type=int, default=20000, help="chunks of the other namespace in DRAM")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tqb-", dir="/tmp"))
    daemon = DaemonProcess(work / "d.sock", ["--dram", "256MiB", "--nvme", "0", "--no-calibrate",
                                             "--quotas", f"capped:{QUOTA_CHUNKS * LAYOUT.chunk_bytes}"],
                           log_path=work / "daemon.log").start()
    try:
        with Client.connect(str(daemon.socket), timeout=60) as c:
            others = chunk_keys(LAYOUT, np.arange(LAYOUT.chunk_tokens * args.others), namespace="others")
            blob = np.zeros(LAYOUT.chunk_bytes, np.uint8)
            for i in range(0, len(others), 1000):
                c.put_chunks(LAYOUT, others[i:i + 1000], [blob] * len(others[i:i + 1000]), namespace="others")
            free = puts_per_second(c, "free", 10**8)
            capped = puts_per_second(c, "capped", 2 * 10**8)
            quota = c.quota()["capped"]
        assert quota["used"]["dram"] <= QUOTA_CHUNKS * LAYOUT.chunk_bytes, quota
        figure("quota_puts_over_quota", capped, "puts/s", "puts of a namespace without a quota", free,
               other_chunks=args.others, quota_chunks=QUOTA_CHUNKS, puts=PUTS)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
