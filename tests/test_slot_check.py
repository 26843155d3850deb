"""A committed slot is what its writer wrote (issue 20, item 4): a commit of a slot that was not
fully written is refused and stores nothing, so the slot's old bytes (another namespace's chunk)
are never served, written down or uploaded under the new key.

On the code before the check, each `commit` below succeeded: the first test then served
namespace a's bytes as namespace b's chunk. Real daemon subprocesses, real arena.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.errors import SlotNotWrittenError
from tierd.keys import chunk_keys
from tierd.store import canary

CHUNK = SMALL.chunk_bytes


def _key(seed: int, namespace: str = "default") -> bytes:
    return chunk_keys(SMALL, np.arange(256) + seed * 1000, namespace=namespace)[0]


def _stat(c: Client) -> dict:
    return c.stat()


def test_an_unwritten_slot_never_serves_the_previous_chunks_bytes(daemon_factory):
    d = daemon_factory(dram="2MiB", nvme="0")  # four slots: a freed slot is handed out again
    a_key, b_key = _key(1, "a"), _key(2, "b")
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        with c.put(SMALL, [a_key], namespace="a") as batch:
            np.copyto(batch.view(0), payload_for(a_key, CHUNK))
        assert c.evict(keys=[a_key])["evicted"] == 1  # its slot is free, its bytes still in it
        with pytest.raises(SlotNotWrittenError, match="committed before it was fully written"):
            with c.put(SMALL, [b_key], namespace="b") as batch:
                assert batch.reserved == [0]  # ... and b writes nothing into the slot it got
        assert c.lookup([b_key]).prefix == 0
        with c.get(SMALL, [b_key]) as lease:
            assert lease.count == 0
        assert _stat(c)["commits_not_written"] == 1
        with c.put(SMALL, [b_key], namespace="b") as batch:  # the reservation was released: retry works
            np.copyto(batch.view(0), payload_for(b_key, CHUNK))
        assert c.get_chunks(SMALL, [b_key]) == [payload_for(b_key, CHUNK).tobytes()]


@pytest.mark.parametrize("written", [0, CHUNK // 2, CHUNK - 4096, CHUNK - 8])
def test_a_partly_written_slot_is_refused_with_the_whole_commit(daemon_factory, written):
    """A copy that stopped part way (a device copy the commit did not wait for): every chunk of
    the commit is refused, the fully written one too, and nothing is stored."""
    d = daemon_factory(nvme="0")
    keys = chunk_keys(SMALL, np.arange(2 * 256) + written)
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        with pytest.raises(SlotNotWrittenError, match=keys[1].hex()):
            with c.put(SMALL, keys) as batch:
                np.copyto(batch.view(0), payload_for(keys[0], CHUNK))
                batch.view(1)[:written] = payload_for(keys[1], CHUNK)[:written]
        assert c.lookup(keys).prefix == 0
        assert _stat(c)["reservations"] == 0


def test_a_copy_that_finishes_after_the_commit_is_refused(daemon_factory):
    d = daemon_factory(nvme="0")
    key = _key(3)
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        batch = c.put(SMALL, [key])
        view = batch.view(0)
        with pytest.raises(SlotNotWrittenError):
            batch.commit()  # sent before the copy
        np.copyto(view, payload_for(key, CHUNK))  # lands too late
        assert c.lookup([key]).prefix == 0


def test_fully_written_slots_whatever_their_bytes_are_committed(daemon_factory):
    """Zeros, and bytes that happen to look like an earlier canary, are data like any other."""
    d = daemon_factory(nvme="0")
    keys = chunk_keys(SMALL, np.arange(2 * 256) + 77)
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        with c.put(SMALL, keys) as batch:
            batch.view(0)[:] = 0
            old = batch.view(1).copy()  # holds this reservation's canary at each page end
            batch.view(1)[:] = np.roll(old, 8)  # every canary word moved off its place
        assert c.lookup(keys).prefix == 2
        assert _stat(c)["commits_not_written"] == 0


def test_no_slot_check_accepts_an_unwritten_slot(daemon_factory):
    """`--no-slot-check` (for measuring the check's cost) turns it off, and `stat` says so."""
    d = daemon_factory(nvme="0", extra=("--no-slot-check",))
    key = _key(4)
    with Client.connect(d.socket) as c:
        c.register_layout(SMALL)
        with c.put(SMALL, [key]):
            pass
        assert c.lookup([key]).prefix == 1
        assert _stat(c)["slot_check"] is False


def test_the_canary_finds_each_unwritten_page():
    buf = bytearray(b"\x01" * (3 * canary.PAGE + 100))
    view = memoryview(buf)
    value = canary.arm(view)
    assert canary.unwritten(view, value) == canary.PAGE - 8
    view[: 2 * canary.PAGE] = b"\x02" * (2 * canary.PAGE)
    assert canary.unwritten(view, value) == 3 * canary.PAGE - 8
    view[: 3 * canary.PAGE] = b"\x02" * (3 * canary.PAGE)
    assert canary.unwritten(view, value) == len(buf) - 8  # the tail past the last full page
    view[-8:] = b"\x03" * 8
    assert canary.unwritten(view, value) is None
    with pytest.raises(ValueError, match="too small"):
        canary.arm(memoryview(bytearray(7)))
