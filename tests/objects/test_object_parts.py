"""The object tier's parts on their own: circuit breaker, upload queue, remote-lookup probe, and
the whole store in embedded mode on obstore's local stores (no S3 server needed)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.config import Config
from tierd.keys import chunk_keys
from tierd.tiers.object.probe import SharedTierProbe
from tierd.tiers.object.breaker import BreakerState, CircuitBreaker
from tierd.tiers.object.tier import ObjectTier
from tierd.store.uploads import Upload, UploadQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_and_probes_after_cooldown():
    clock = FakeClock()
    b = CircuitBreaker("t", failures=3, cooldown=1.0, max_cooldown=4.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow() and not b.would_allow()
    clock.now += 1.0
    assert b.would_allow() and b.allow()  # one probe ...
    assert not b.allow()  # ... at a time
    b.failure()  # the probe failed: open again, cooldown doubled
    assert b.state is BreakerState.OPEN and b.seconds_until_retry() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.cooldown == 1.0


def test_breaker_cooldown_is_capped():
    clock = FakeClock()
    b = CircuitBreaker("t", failures=1, cooldown=1.0, max_cooldown=3.0, clock=clock)
    b.failure()
    for _ in range(5):
        clock.now += b.seconds_until_retry()
        assert b.allow()
        b.failure()
    assert b.cooldown == 3.0


def _upload(key: bytes, size: int = 10) -> Upload:
    return Upload(key, "ab", "ns", size, 0.0, 0)


async def test_upload_queue_drops_oldest_over_its_bound():
    q = UploadQueue(max_bytes=30)
    for k in (b"a", b"b", b"c"):
        q.put(_upload(k))
    q.put(_upload(b"d"))
    assert q.dropped == 1 and b"a" not in q and q.bytes == 30
    q.put(_upload(b"c"))  # a key again replaces its entry (and moves to the back)
    assert len(q) == 3 and [(await q.get()).key for _ in range(3)] == [b"b", b"d", b"c"]
    q.put(_upload(b"big", 31))  # larger than the bound: dropped at once
    assert len(q) == 0 and q.dropped == 2


async def test_upload_queue_retry_goes_to_the_front():
    q = UploadQueue(max_bytes=100)
    q.put(_upload(b"a"))
    q.put(_upload(b"b"))
    first = await q.get()
    q.put(first, front=True)
    assert (await q.get()).key == b"a"


async def test_upload_queue_get_waits_for_a_put():
    q = UploadQueue(max_bytes=100)
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put(_upload(b"x"))
    assert (await asyncio.wait_for(getter, 5)).key == b"x"


async def test_probe_finds_the_leading_run_in_waves():
    tier = ObjectTier("memory://", node="n")
    keys = [bytes([i]) * 16 for i in range(40)]
    for k in keys[:30]:
        await tier.write(k, "ab12", "ns", memoryview(b"\x07" * 1000))
    found: list = []
    probe = SharedTierProbe(tier, found.extend, budget=5.0, strategy="walk", first_wave=4, growth=2)
    await probe.extend(keys)
    assert [h.key for h in found] == keys[:30] and all(h.payload_len == 1000 for h in found)
    # the miss at 30 is remembered: a second probe stops there without asking the store
    calls = []
    real = tier.stored_size
    tier.stored_size = lambda k: calls.append(k) or real(k)  # type: ignore[method-assign]
    await probe.extend(keys[30:])
    assert calls == [] and probe.negative_hits == 1
    probe.forget_miss(keys[30])
    await probe.extend(keys[30:])
    assert calls == keys[30:34] and len(found) == 30


async def test_probe_answers_within_its_budget_and_goes_on_in_the_background():
    tier = ObjectTier("memory://", node="n")
    keys = [os.urandom(16) for _ in range(64)]
    for k in keys:
        await tier.write(k, "ab12", "ns", memoryview(b"\x07" * 100))
    gate = asyncio.Event()
    real = tier.stored_size

    async def slow(key: bytes):
        await gate.wait()  # a store that answers only when the test says so
        return await real(key)

    tier.stored_size = slow  # type: ignore[method-assign]
    found: list = []
    probe = SharedTierProbe(tier, found.extend, budget=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await probe.extend(keys)
    assert loop.time() - t0 < 1.0 and probe.budget_exceeded == 1 and found == []
    assert probe.stats()["remote_walks"] == 1
    await probe.extend(keys)  # joins the running walk instead of starting another
    assert probe.stats()["remote_walks"] == 1
    gate.set()
    await asyncio.wait_for(asyncio.gather(*probe._walks.values()), 5)
    assert [h.key for h in found] == keys  # found after the budget, indexed all the same


def _config(tmp_path: Path, name: str, object_url: str, **kw) -> Config:
    return Config(socket=str(tmp_path / f"{name}.sock"), dram="16MiB", nvme_dir=str(tmp_path / f"{name}-nvme"),
                  nvme="64MiB", calibrate=False, object_url=object_url, node_id=name, **kw)


def test_embedded_stores_share_a_file_bucket(tmp_path):
    """Two in-process stores (two 'nodes') on one file:// object tier: b serves what a put."""
    url = f"file://{tmp_path}/bucket"
    keys = chunk_keys(SMALL, np.random.default_rng(7).integers(0, 32000, 256 * 5))
    with Client.embedded(_config(tmp_path, "a", url)) as a:
        a.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
    # a's close drained its upload queue
    with Client.embedded(_config(tmp_path, "b", url)) as b:
        res = b.lookup(keys)
        assert res.prefix == 5 and set(res.tiers) == {"object"}
        with b.get(SMALL, keys) as lease:
            assert lease.count == 5
            assert all(lease.view(i).tobytes() == payload_for(k, SMALL.chunk_bytes).tobytes()
                       for i, k in enumerate(keys))
        assert b.inspect(keys[0])["object"]["node"] == "a"


def test_read_only_node_writes_nothing(tmp_path):
    url = f"file://{tmp_path}/bucket"
    keys = chunk_keys(SMALL, np.random.default_rng(8).integers(0, 32000, 256 * 2))
    with Client.embedded(_config(tmp_path, "ro", url, object=0)) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        assert c.lookup(keys).prefix == 2
    assert not list((tmp_path / "bucket").rglob("*.chunk"))


def test_owned_objects_are_counted_again_after_a_restart(tmp_path):
    url = f"file://{tmp_path}/bucket"
    keys = chunk_keys(SMALL, np.random.default_rng(9).integers(0, 32000, 256 * 3))
    with Client.embedded(_config(tmp_path, "a", url)) as a:
        a.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
    with Client.embedded(_config(tmp_path, "a", url)) as a:
        obj = next(t for t in a.stat()["tiers"] if t["name"] == "object")
        assert obj["chunks"] == 3 and obj["used_bytes"] == 3 * (512 + SMALL.chunk_bytes)


def test_object_cap_evicts_this_nodes_oldest_uploads(tmp_path):
    url = f"file://{tmp_path}/bucket"
    stored = 512 + SMALL.chunk_bytes
    keys = chunk_keys(SMALL, np.random.default_rng(10).integers(0, 32000, 256 * 6))
    with Client.embedded(_config(tmp_path, "a", url, object=3 * stored)) as c:
        for i, k in enumerate(keys):  # one at a time, so upload order is put order
            c.put_chunks(SMALL, [k], [payload_for(k, SMALL.chunk_bytes)])
            _wait_settled(c, min(i + 1, 3))
        obj = next(t for t in c.stat()["tiers"] if t["name"] == "object")
        assert obj["used_bytes"] == 3 * stored and obj["evictions"] == 3
    names = {p.name.removesuffix(".chunk") for p in (tmp_path / "bucket").rglob("*.chunk")}
    assert names == {k.hex() for k in keys[3:]}  # the three newest stayed in the bucket


def _wait_settled(c: Client, chunks: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        t = next(t for t in c.stat()["tiers"] if t["name"] == "object")
        if t["upload_queued"] == 0 and t["upload_inflight"] == 0 and t["chunks"] >= chunks:
            return
        assert time.monotonic() < deadline, t
        time.sleep(0.01)  # polling with a deadline
