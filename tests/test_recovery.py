"""A daemon killed with SIGKILL in the middle of a stream of writes loses nothing that had
reached NVMe, never serves a partial or corrupt chunk, and accounts NVMe capacity exactly."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.keys import chunk_keys

_WRITER = """
import sys, numpy as np
from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.keys import chunk_keys
c = Client.connect(sys.argv[1])
for i in range(10_000):
    keys = chunk_keys(SMALL, np.arange(256 * 4) + i * 1_000_000)
    c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
    print(i, flush=True)
"""


def _all_keys(n: int) -> list[bytes]:
    return [k for i in range(n) for k in chunk_keys(SMALL, np.arange(256 * 4) + i * 1_000_000)]


def test_kill_9_mid_write_stream_then_restart(daemon_factory, tmp_path):
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(name="a", dram="8MiB", nvme="1GiB", nvme_dir=nvme_dir)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, d.socket], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
    with Client.connect(d.socket) as c:
        deadline = time.monotonic() + 120
        on_nvme: set[bytes] = set()
        while len(on_nvme) < 40:  # wait (with a deadline) until demotions have written plenty
            assert time.monotonic() < deadline, "the writer did not push chunks to NVMe in time"
            on_nvme = {bytes.fromhex(r["key"]) for r in c.ls(tier="nvme")}
        d.kill()  # SIGKILL while the writer is still writing and demotions are in flight
    writer.wait(60)
    batches = int(writer.stdout.read().split()[-1]) + 2 if writer.stdout else 0

    d2 = daemon_factory(name="b", dram="8MiB", nvme="1GiB", nvme_dir=nvme_dir)
    with Client.connect(d2.socket) as c:
        # Every chunk that had reached NVMe before the kill is still there, byte-identical.
        found = c.lookup(sorted(on_nvme)).tiers
        assert found == ["nvme"] * len(on_nvme)
        for key in on_nvme:
            assert c.get_chunks(SMALL, [key]) == [payload_for(key, SMALL.chunk_bytes).tobytes()]
        # Nothing served is partial or corrupt, whichever keys survived.
        keys = _all_keys(batches)
        present = [k for k, t in zip(keys, c.lookup(keys).tiers) if t is not None]
        assert len(present) >= len(on_nvme)
        for key in present:
            got = c.get_chunks(SMALL, [key])
            assert got == [] or got == [payload_for(key, SMALL.chunk_bytes).tobytes()]
        # Capacity accounting equals the chunk files on disk; no temp file survived the restart.
        files = list(nvme_dir.rglob("*.chunk"))
        nvme = next(t for t in c.stat()["tiers"] if t["name"] == "nvme")
        assert nvme["used_bytes"] == sum(f.stat().st_size for f in files)
        assert nvme["chunks"] == len(files)
        assert [p for p in nvme_dir.rglob("*") if p.is_file() and p.suffix not in (".chunk", ".msgpack")] == []
