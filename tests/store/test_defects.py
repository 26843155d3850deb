"""Regression tests for the defects of the monolithic store (issue 19), one per defect. Each
docstring says how the pre-split store (commit 69d0686, tierd/store.py) failed it.

The daemon tests run `tierd serve` as a subprocess; the in-process ones drive a real
`TieredStore` (shared-memory arena, NVMe directory) on the test's loop, where an interleaving
can be set up exactly instead of hoped for.
"""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tests.store.stores import NVME, build_store, check_invariants, get, nvme_files, put, settle
from tests.waiting import wait_until
from tests.waiting import wait_for
from tierd.client import Client
from tierd.errors import InvalidArgumentError
from tierd.keys import MAX_NAMESPACE_BYTES, chunk_keys
from tierd.store import DRAM
from tierd.tiers.nvme.format import ChunkHeader, decode_header, encode_header, file_size
from tierd.tiers.object.format import ObjectHeader, pack_header, parse_header

CHUNK = SMALL.chunk_bytes  # 512 KiB
FILE = file_size(CHUNK)  # 528,384 bytes: one NVMe chunk file


def _keys(seed: int, n: int, namespace: str = "default") -> list[bytes]:
    return chunk_keys(SMALL, np.random.default_rng(seed).integers(0, 32000, 256 * n), namespace=namespace)


def _payloads(keys: list[bytes]) -> list[np.ndarray]:
    return [payload_for(k, CHUNK) for k in keys]


def _files_on_disk(nvme_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in nvme_dir.glob("*/*.chunk")}


def _tiers(c: Client) -> dict[str, dict]:
    return {t["name"]: t for t in c.stat()["tiers"]}


# ---------------------------------------------------------------- a. two moves of one chunk


def test_two_concurrent_cli_evicts_from_dram_of_one_key(daemon_factory, tmp_path):
    """Two `tierd evict --tier dram` of one key at once both get an answer, the key ends on NVMe
    once, and the demoter still makes room afterwards.

    Old code: when both requests were read in one loop turn, each scheduled `_demote` of the
    chunk (the in-flight marker was set inside `_demote`, unchecked); the second overwrote the
    first's future, the one finishing last called `set_result` on None, and the AttributeError
    escaped the dispatcher (it caught only TierdError), dropping that connection. Both writes
    were charged: NVMe used bytes 1,056,768 for one 528,384-byte file. (Two CLI processes land in
    one loop turn only by chance: against the old code its race checks passed in the run tried; the
    pipelined test below and the in-process one reproduce the race every time.)"""
    d = daemon_factory("ev", dram="8MiB", nvme="64MiB", extra=("--no-calibrate",))
    nvme_dir = tmp_path / "ev-nvme"
    keys = _keys(1, 4)
    with Client.connect(d.socket) as c:
        for round_, key in enumerate(keys, 1):
            assert c.put_chunks(SMALL, [key], _payloads([key])) == 1
            cmd = [sys.executable, "-m", "tierd", "evict", "--socket", d.socket, "--tier", "dram", "--yes", "--json",
                   key.hex()]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            replies = []
            for p in procs:
                out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
                replies.append(json.loads(out))
            assert all(r["evicted"] + r["busy"] <= 1 and r["pinned"] == 0 for r in replies), replies
            assert c.lookup([key]).tiers == [NVME]
            on_disk = _files_on_disk(nvme_dir)
            assert len(on_disk) == round_ and set(on_disk.values()) == {FILE}
            assert _tiers(c)[NVME]["used_bytes"] == sum(on_disk.values())
        # the demoter is alive: 40 chunks through a 16-slot DRAM all find room
        more = _keys(2, 40)
        assert c.put_chunks(SMALL, more, _payloads(more)) == 40
        assert c.stat()["background_restarts"] == 0
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in _payloads(keys)]


def test_two_pipelined_evicts_from_dram_of_one_key(daemon_factory, tmp_path):
    """The same race as above with the two requests sent back to back on two connections
    (written to the sockets without waiting for a reply), so the daemon most often reads both
    in one loop turn: every pair gets two answers, each key is on NVMe once.

    Old code: the connection whose `_demote` finished last was dropped (DaemonUnavailableError
    here) in the rounds where both requests were read in one turn."""
    d = daemon_factory("ev3", dram="8MiB", nvme="64MiB", extra=("--no-calibrate",))
    keys = _keys(16, 12)
    with Client.connect(d.socket) as a, Client.connect(d.socket) as b:
        assert a.put_chunks(SMALL, keys, _payloads(keys)) == 12
        for key in keys:
            for c in (a, b):
                c._post("evict", keys=[key], namespace=None, tier=DRAM, all=False)
            assert a.stat() and b.stat()  # each reads its evict's reply first (a dropped one raises)
        assert a.lookup(keys).tiers == [NVME] * 12
        on_disk = _files_on_disk(tmp_path / "ev3-nvme")
        assert len(on_disk) == 12 and _tiers(a)[NVME]["used_bytes"] == sum(on_disk.values()) == 12 * FILE


def test_one_evict_naming_a_key_twice(daemon_factory, tmp_path):
    """An evict that names one key twice moves it once and answers.

    Old code: the key's chunk was listed twice and `_demote` gathered twice over it, the same
    double demotion as two racing evicts but every time: AttributeError, connection dropped
    (the client saw ConnectionError), NVMe used bytes twice the file."""
    d = daemon_factory("ev2", dram="8MiB", nvme="64MiB", extra=("--no-calibrate",))
    key = _keys(3, 1)[0]
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, [key], _payloads([key]))
        assert c.evict(keys=[key, key], tier=DRAM)["evicted"] == 1
        assert c.lookup([key]).tiers == [NVME]
        assert _tiers(c)[NVME]["used_bytes"] == sum(_files_on_disk(tmp_path / "ev2-nvme").values()) == FILE
        assert c.get_chunks(SMALL, [key]) == [payload_for(key, CHUNK).tobytes()]


async def test_evict_racing_a_demoter_wake_up(tmp_path):
    """An evict from DRAM of the chunk the demoter picks in the same loop turn: one move, the
    evict answers, the demoter lives on and puts that need room succeed.

    Old code: the demoter's `_demote` and the evict's `_demote` both ran on the chunk; the
    AttributeError of the double marker killed whichever finished last — when that was the
    demoter, every later put needing room waited out its 5 s deadline and stored nothing."""
    store = build_store(tmp_path, dram_bytes=4 * CHUNK, nvme_bytes=64 * FILE)
    await store.start()
    try:
        store.register_layout(SMALL)
        keys = _keys(4, 24)
        for i in range(0, 24, 4):
            batch = keys[i:i + 4]
            await store.evict(everything=True, tier=DRAM)  # an empty DRAM to start from
            await settle(store)
            assert await put(store, SMALL, "default", batch[:3]) == batch[:3]
            assert not store.dram_room.pressure.is_set()
            assert await put(store, SMALL, "default", batch[3:]) == batch[3:]  # over the high watermark
            assert store.dram_room.pressure.is_set()  # the demoter wakes in the next loop turn ...
            oldest = next(iter(store.dram_room.policy.candidates()))
            result = await store.evict(keys=[oldest], tier=DRAM)  # ... and so does this evict
            assert result["evicted"] + result["busy"] == 1, result
            await settle(store)
            check_invariants(store)
            assert NVME in store.index[oldest].lower
        more = _keys(5, 12)
        for i in range(0, 12, 2):  # two chunks a put, as an engine stores a prompt: room is made
            assert await asyncio.wait_for(put(store, SMALL, "default", more[i:i + 2]), 10) == more[i:i + 2]
        await settle(store)
        check_invariants(store)
        everything = keys + more
        for i in range(0, len(everything), 2):  # a lease holds its chunks in DRAM: a few at a time
            assert await get(store, SMALL, everything[i:i + 2]) == everything[i:i + 2]
        assert store.background_restarts() == 0
    finally:
        await store.close(flush=False)


# ---------------------------------------------------------------- b, c. quota overshoot


async def test_concurrent_puts_never_exceed_the_dram_quota(tmp_path):
    """Twelve concurrent puts in a namespace with a 2-chunk quota, while DRAM is full of another
    tenant's chunks (so each put waits for room): at no loop turn does the namespace hold more
    than 2 chunks in DRAM, counting reservations.

    Old code: `reserve` checked the quota, awaited a slot, and charged only then: every put
    passed the check before any had charged, and the namespace ended with as many chunks as
    slots the demoter freed (3 under a 2-chunk quota with two puts, up to 6 under heavier load)."""
    store = build_store(tmp_path, dram_bytes=8 * CHUNK, nvme_bytes=64 * FILE, quotas={"a": 2 * CHUNK})
    await store.start()
    try:
        store.register_layout(SMALL)
        assert len(await put(store, SMALL, "b", _keys(6, 8, "b"))) == 8  # DRAM full, nothing written down
        a_keys = _keys(7, 12, "a")
        most = 0
        done = False

        async def watch() -> None:
            nonlocal most
            while not done:
                held = [r for r in store.index.reserved.values() if r.namespace == "a"]
                held += [c for c in store.index.values() if c.namespace == "a" and c.slot is not None]
                most = max(most, sum(x.size for x in held))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        stored = await asyncio.gather(*(put(store, SMALL, "a", [k]) for k in a_keys))
        done = True
        await watcher
        assert most <= 2 * CHUNK, f"namespace a held {most // CHUNK} chunks in DRAM under a 2-chunk quota"
        assert 1 <= sum(map(len, stored)) <= 2
        assert store.quotas.report("a")["a"]["used"][DRAM] <= 2 * CHUNK
        await settle(store)
        check_invariants(store, ["a"])
        # a later put of a makes room from a's own chunks, never b's
        late = _keys(8, 2, "a")
        assert await put(store, SMALL, "a", late) == late
        await settle(store)
        check_invariants(store, ["a"])
        assert store.stat()["reservations"] == 0
    finally:
        await store.close(flush=False)


async def test_concurrent_write_downs_never_exceed_the_nvme_quota(tmp_path):
    """Three chunks of a namespace whose quota holds two NVMe files, written down at once (one
    evict from DRAM of all three, then the demoter): never more than two of its files on disk.

    Old code: `_write_lower` checked the quota, wrote, and charged after the write: all three
    passed the check and the namespace had 3 files under a 2-file quota."""
    limit = 3 * CHUNK  # 3 chunks in DRAM, but only 2 files (528,384 bytes each) on NVMe
    store = build_store(tmp_path, dram_bytes=16 * CHUNK, nvme_bytes=64 * FILE, quotas={"a": limit})
    await store.start()
    try:
        store.register_layout(SMALL)
        most = 0
        done = False

        async def watch() -> None:  # a's files on disk (temp files of writes in flight included)
            nonlocal most
            root = tmp_path / "nvme"
            while not done:
                names = {p.name.split(".")[0] for p in root.glob("*/*.*")}
                most = max(most, len(names & {k.hex() for k in a_keys}))
                await asyncio.sleep(0)

        a_keys = _keys(9, 9, "a")
        watcher = asyncio.ensure_future(watch())
        for i in range(0, 9, 3):
            batch = a_keys[i:i + 3]
            assert await put(store, SMALL, "a", batch) == batch
            result = await store.evict(keys=batch, tier=DRAM)
            assert result["evicted"] >= 1  # some went down (making room from a's own older files)
            await settle(store)
            check_invariants(store, ["a"])
            assert store.quotas.used(NVME, "a") <= limit
        done = True
        await watcher
        assert most <= 2, f"namespace a had {most} files on NVMe under a 2-file quota"
        assert sum(1 for k in a_keys if k in nvme_files(store)) <= 2
    finally:
        await store.close(flush=False)


# ---------------------------------------------------------------- d. one namespace limit


def test_the_header_formats_take_the_stores_namespace_limit():
    """NVMe and object headers hold any namespace the store accepts, and refuse a longer one.

    Old code: the store allowed 255 *characters*, both headers 256 UTF-8 bytes: a namespace of
    86 "€" (258 bytes) was stored in DRAM and then failed every write-down."""
    longest, too_long = "€" * 85, "€" * 85 + "a"
    assert len(longest.encode()) == MAX_NAMESPACE_BYTES == 255
    key = bytes(range(16))
    block = bytearray(4096)
    encode_header(ChunkHeader(key, "ab12", longest, CHUNK, 1, 2.0), memoryview(block))
    assert decode_header(block).namespace == longest
    obj = ObjectHeader(key=key, layout_id="ab12", namespace=longest, payload_len=CHUNK, checksum=1, created=2.0,
                       node="n", stored_len=CHUNK)
    assert parse_header(pack_header(obj)).namespace == longest
    with pytest.raises(InvalidArgumentError, match="255"):
        encode_header(ChunkHeader(key, "ab12", too_long, CHUNK, 1, 2.0), memoryview(block))
    with pytest.raises(InvalidArgumentError, match="255"):
        pack_header(ObjectHeader(key=key, layout_id="ab12", namespace=too_long, payload_len=CHUNK, checksum=1,
                                 created=2.0, node="n", stored_len=CHUNK))


@pytest.mark.parametrize("namespace", ["€" * 86, "a" * 256, "tenant-\ud800"])
async def test_the_store_refuses_a_namespace_no_medium_can_hold(tmp_path, namespace):
    """A put in a namespace longer than 255 UTF-8 bytes (or that is not valid Unicode, so no
    header can encode it) is refused before anything is reserved.

    Old code: "€" * 86 is 86 characters and was accepted, then never written down (the NVMe
    header took 256 bytes); a lone surrogate was accepted too and failed every write-down with
    a UnicodeEncodeError traceback."""
    store = build_store(tmp_path, dram_bytes=4 * CHUNK, nvme_bytes=8 * FILE)
    await store.start()
    try:
        store.register_layout(SMALL)
        with pytest.raises(InvalidArgumentError, match="namespace"):
            await put(store, SMALL, namespace, _keys(15, 1))
        assert store.alloc.used == 0 and not store.index and not store.index.reserved
    finally:
        await store.close(flush=False)


def test_a_255_byte_namespace_goes_down_every_tier_and_a_longer_one_is_refused(object_daemons, object_url):
    """A namespace of 85 "€" (255 UTF-8 bytes) is stored, written to NVMe and the object tier,
    and read back from each; one of 86 "€" (258 bytes) is refused at the put with the limit in
    the message, nothing of it stored; other tenants' write-downs go on.

    Old code: 86 "€" is 86 characters, within the store's 255-character check, so the put
    succeeded; every write-down of those chunks then failed in the NVMe header (256 bytes), the
    demoter retried them first each time, and write-down stalled for every tenant."""
    ns = "€" * 85
    d = object_daemons("ns", object_url, dram="8MiB", nvme="64MiB")
    keys, others = _keys(10, 3, ns), _keys(11, 3, "other")
    with Client.connect(d.socket) as c:
        assert c.put_chunks(SMALL, keys, _payloads(keys), namespace=ns) == 3
        assert c.put_chunks(SMALL, others, _payloads(others), namespace="other") == 3
        # write-through: uploaded to the object tier (an upload holds its DRAM copy meanwhile)
        wait_for("uploads of both namespaces",
                 lambda: [row["tiers"] for row in c.ls()] == [[DRAM, "object"]] * 6)
        assert c.evict(keys=keys + others, tier=DRAM)["evicted"] == 6  # written to NVMe
        assert c.lookup(keys).tiers == [NVME] * 3
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in _payloads(keys)]  # from NVMe
        # keep only the object copy and read it back from there
        c.evict(keys=keys, tier=DRAM)
        c.evict(keys=keys, tier=NVME)
        assert c.lookup(keys).tiers == ["object"] * 3
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in _payloads(keys)]
        assert c.inspect(keys[0])["namespace"] == ns

        for bad in ("€" * 86, "a" * 256):
            with pytest.raises(InvalidArgumentError, match=f"at most {MAX_NAMESPACE_BYTES} bytes"):
                c.put_chunks(SMALL, others[:1], _payloads(others[:1]), namespace=bad)
            assert bad not in {row["namespace"] for row in c.ls()}
        later = _keys(12, 20, "other")  # more than DRAM holds: the demoter writes them down
        assert c.put_chunks(SMALL, later, _payloads(later), namespace="other") == 20
        assert NVME in c.lookup(later).tiers
        for i in range(0, 20, 4):  # a get leases its chunks in the 16-slot DRAM: a few at a time
            assert c.get_chunks(SMALL, later[i:i + 4]) == [p.tobytes() for p in _payloads(later[i:i + 4])]
        assert not c.stat()["writedown_failing"]


# ---------------------------------------------------------------- e. supervised background tasks


async def test_a_crashed_demoter_is_logged_and_restarted(tmp_path, caplog):
    """The demoter dies of an unexpected exception: the death is logged with its traceback, the
    task is restarted, `background_alive()` stays true and puts that need room succeed.

    Old code: the demoter was a bare task; an exception ended it silently ("Task exception was
    never retrieved" at exit) and every later put needing room waited out its 5 s deadline and
    stored nothing."""
    store = build_store(tmp_path, dram_bytes=4 * CHUNK, nvme_bytes=64 * FILE)
    await store.start()
    real_pick = store.demoter.pick
    crashes = 0

    def crashing_pick():  # type: ignore[no-untyped-def]
        nonlocal crashes
        if crashes < 2:  # the first two wake-ups die
            crashes += 1
            raise RuntimeError(f"injected demoter failure {crashes}")
        return real_pick()

    store.demoter.pick = crashing_pick  # type: ignore[method-assign]
    try:
        store.register_layout(SMALL)
        with caplog.at_level(logging.ERROR, logger="tierd.supervise"):
            keys = _keys(13, 4)
            assert await put(store, SMALL, "default", keys) == keys  # over the high watermark: the demoter wakes
            await wait_until("the demoter to die and come back", lambda: store.background_restarts() == 1)
            assert store.background_alive()
            # This put waits for room and wakes the demoter, which dies again while the put
            # waits: the restarted demoter must still make that room (within the put's deadline).
            more = _keys(14, 12)
            for i in range(0, 12, 2):
                assert await put(store, SMALL, "default", more[i:i + 2]) == more[i:i + 2]
            assert store.background_restarts() == 2 and store.background_alive()
        died = [r for r in caplog.records if "tierd-demoter died" in r.getMessage()]
        assert [str(r.exc_info[1]) for r in died if r.exc_info] == [f"injected demoter failure {i}" for i in (1, 2)]
        await settle(store)
        check_invariants(store)
        everything = keys + more
        for i in range(0, len(everything), 2):  # a lease holds its chunks in DRAM: a few at a time
            assert await get(store, SMALL, everything[i:i + 2]) == everything[i:i + 2]
    finally:
        await store.close(flush=False)
