"""The daemon as a real subprocess: round trips, tiers under pressure, leases, many clients."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SMALL, payload_for
from tests.waiting import wait_for
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout


def _tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_round_trip_is_byte_identical(daemon, dtype):
    layout = Layout("rt-model", str(dtype).removeprefix("torch."), 4, 2, 64, chunk_tokens=256)
    keys = chunk_keys(layout, _tokens(1, 256 * 6))
    tensors = [torch.randn(layout.chunk_shape, dtype=torch.float32).to(dtype) for _ in keys]
    with Client.connect(daemon.socket) as c:
        with c.put(layout, keys) as batch:
            assert batch.reserved == list(range(len(keys)))
            for i in batch.reserved:
                batch.tensor(i).copy_(tensors[i])
        assert c.lookup(keys).prefix == len(keys)
        with c.get(layout, keys) as lease:
            assert lease.count == len(keys)
            for i, t in enumerate(tensors):
                got = lease.tensor(i)
                assert got.dtype == dtype and got.shape == t.shape
                assert torch.equal(got.view(torch.uint8), t.view(torch.uint8))


def test_put_of_stored_key_gets_no_slot(daemon):
    keys = chunk_keys(SMALL, _tokens(2, 256 * 2))
    with Client.connect(daemon.socket) as c:
        assert c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys]) == 2
        with c.put(SMALL, keys) as batch:
            assert batch.reserved == []


def test_demotion_and_promotion_under_pressure(daemon_factory):
    d = daemon_factory(dram="16MiB", nvme="256MiB", extra=("--dram-policy", "lru"))  # 32 DRAM slots of 512 KiB
    keys = chunk_keys(SMALL, _tokens(3, 256 * 100))
    with Client.connect(d.socket) as c:
        assert c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys]) == 100
        res = c.lookup(keys)
        assert res.prefix == 100
        assert res.tiers.count("nvme") >= 100 - 32  # most went down to NVMe
        assert "dram" in res.tiers[-8:]  # the newest are still in DRAM
        got = c.get_chunks(SMALL, keys[:20])  # oldest: promoted from NVMe
        assert [bytes(g) for g in got] == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in keys[:20]]
        st = {t["name"]: t for t in c.stat()["tiers"]}
        assert st["dram"]["promotions"] >= 20 and st["dram"]["demotions"] >= 68
        assert st["dram"]["used_bytes"] <= st["dram"]["capacity_bytes"]
        assert st["nvme"]["used_bytes"] <= st["nvme"]["capacity_bytes"]
        assert c.lookup(keys[:20]).tiers == ["dram"] * 20


def test_nvme_capacity_is_never_exceeded_and_lru_goes_first(daemon_factory):
    d = daemon_factory(dram="8MiB", nvme="24MiB", extra=("--dram-policy", "lru"))  # NVMe holds ~46 files of 516 KiB
    keys = chunk_keys(SMALL, _tokens(4, 256 * 120))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        st = {t["name"]: t for t in c.stat()["tiers"]}
        assert st["nvme"]["used_bytes"] <= 24 << 20
        assert st["nvme"]["evictions"] > 0
        res = c.lookup(keys)
        assert res.tiers[0] is None and res.tiers[-1] == "dram"  # the oldest left first
        # NVMe chunks read back intact; newest first, since each promotion makes room in DRAM by
        # demoting, which in turn evicts the least recently used NVMe chunk.
        on_nvme = [k for k, t in zip(keys, res.tiers) if t == "nvme"]
        for k in reversed(on_nvme[-10:]):
            assert c.get_chunks(SMALL, [k]) == [payload_for(k, SMALL.chunk_bytes).tobytes()]


def test_lease_blocks_eviction_and_release_lets_it_go(daemon_factory):
    d = daemon_factory(dram="8MiB", nvme="0")  # no lower tier: eviction drops chunks
    first = chunk_keys(SMALL, _tokens(5, 256 * 4))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, first, [payload_for(k, SMALL.chunk_bytes) for k in first])
        lease = c.get(SMALL, first)
        assert lease.count == 4
        more = chunk_keys(SMALL, _tokens(6, 256 * 40))
        c.put_chunks(SMALL, more, [payload_for(k, SMALL.chunk_bytes) for k in more])
        assert c.lookup(first).prefix == 4  # leased: still there despite pressure
        assert bytes(lease.view(3)) == payload_for(first[3], SMALL.chunk_bytes).tobytes()
        assert c.evict(keys=first)["busy"] == 4
        lease.release()
        assert c.evict(keys=first)["evicted"] == 4
        assert c.lookup(first).prefix == 0


def test_pinned_chunks_survive_pressure(daemon_factory):
    d = daemon_factory(dram="8MiB", nvme="0")
    pinned = chunk_keys(SMALL, _tokens(7, 256 * 2))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, pinned, [payload_for(k, SMALL.chunk_bytes) for k in pinned])
        assert c.pin(pinned) == 2
        more = chunk_keys(SMALL, _tokens(8, 256 * 40))
        c.put_chunks(SMALL, more, [payload_for(k, SMALL.chunk_bytes) for k in more])
        assert c.lookup(pinned).prefix == 2
        assert c.evict(keys=pinned)["pinned"] == 2
        assert c.unpin(pinned) == 2
        assert c.evict(keys=pinned)["evicted"] == 2


def test_sixteen_concurrent_clients(daemon_factory):
    d = daemon_factory(dram="32MiB", nvme="512MiB")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client.connect(d.socket, name=f"w{n}") as c:
                shared = chunk_keys(SMALL, _tokens(100, 256 * 4))  # the same prefix for everyone
                own = chunk_keys(SMALL, _tokens(200 + n, 256 * 6))
                for keys in (shared, own):
                    c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
                # Only one worker's reserve of the shared prefix wins; the others store nothing of
                # it and, until the winner commits, a get of it is rightly a miss.
                wait_for("the shared prefix to be committed", lambda: c.lookup(shared).prefix == len(shared))
                for keys in (shared, own):
                    got = c.get_chunks(SMALL, keys)
                    assert len(got) == len(keys)
                    assert all(g == payload_for(k, SMALL.chunk_bytes).tobytes() for g, k in zip(got, keys))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with Client.connect(d.socket) as c:
        st = c.stat()
        assert st["chunks"] == 4 + 16 * 6  # the shared prefix is stored once
        assert st["leases"] == 0 and st["reservations"] == 0


_HOLDER = """
import os, sys, numpy as np
from tierd.client import Client
from tierd.layout import Layout
from tierd.keys import chunk_keys
layout = Layout("test-model", "bfloat16", 4, 2, 64, chunk_tokens=256)
c = Client.connect(sys.argv[1])
stored = chunk_keys(layout, np.arange(256 * 3))
lease = c.get(layout, stored)
pending = chunk_keys(layout, np.arange(256 * 5) + 1)
batch = c.put(layout, pending)
batch.view(0)[:] = 7  # half-written
print(lease.count, len(batch.reserved), flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_client_killed_mid_write_leaks_nothing(daemon):
    keys = chunk_keys(SMALL, np.arange(256 * 3))
    with Client.connect(daemon.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        baseline = c.stat()["tiers"][0]["used_bytes"]
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, daemon.socket], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().split() == ["3", "5"]
        st = c.stat()
        assert st["leases"] == 1 and st["reservations"] == 5
        assert st["tiers"][0]["used_bytes"] == baseline + 5 * SMALL.chunk_bytes
        holder.kill()
        holder.wait()
        # The daemon notices the closed connection; wait on that condition with a deadline.
        deadline = time.monotonic() + 10
        while c.stat()["sessions"] > 1 and time.monotonic() < deadline:
            pass  # poll the daemon's own count until it has seen the close
        st = c.stat()
        assert st["sessions"] == 1 and st["leases"] == 0 and st["reservations"] == 0
        assert st["tiers"][0]["used_bytes"] == baseline
        pending = chunk_keys(SMALL, np.arange(256 * 5) + 1)
        assert c.lookup(pending).prefix == 0  # the half-written chunks never became visible
        assert c.get_chunks(SMALL, keys) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in keys]


def test_socket_is_private(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


def test_sigterm_flushes_to_nvme_and_restart_serves_it(daemon_factory, tmp_path):
    nvme_dir = tmp_path / "shared-nvme"
    d = daemon_factory(name="a", nvme_dir=nvme_dir)
    keys = chunk_keys(SMALL, _tokens(9, 256 * 10))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        assert c.lookup(keys).tiers == ["dram"] * 10
    assert d.stop() == 0
    assert not Path(d.socket).exists()
    d2 = daemon_factory(name="b", nvme_dir=nvme_dir)
    with Client.connect(d2.socket) as c:
        assert c.lookup(keys).tiers == ["nvme"] * 10
        assert c.get_chunks(SMALL, keys) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in keys]


def test_second_daemon_on_same_socket_is_refused(daemon, tmp_path):
    r = subprocess.run([sys.executable, "-m", "tierd", "serve", "--socket", daemon.socket, "--dram", "64MiB",
                        "--nvme", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "already serving" in r.stderr
