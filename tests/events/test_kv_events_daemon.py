"""KV events from a real daemon (`--kv-events`), read by vLLM's own decoder: every store,
demotion, promotion, eviction and upload appears once, in order, on the right medium; a
subscriber that joins late catches up through replay; a restart starts afresh and announces
what the node still holds.

"In order" is checked by replaying the events into a model of the node (`NodeView`): an event
that removes a copy the node does not hold, or stores one it holds, fails at once; and once the
daemon is idle the model must equal what the daemon lists (`ls`)."""
from __future__ import annotations

import pytest

from tests.conftest import SMALL, payload_for
from tests.events.subscriber import NodeView, Subscriber, daemon_state, endpoints
from tests.waiting import wait_for
from tierd.client import Client
from tierd.keys import chunk_keys

C = SMALL.chunk_tokens
EVENTS = ("--no-calibrate", "--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0")


def _prompt(n_chunks: int, seed: int) -> tuple[list[bytes], list[list[int]]]:
    tokens = [(seed * 7919 + i * 31) % 50000 for i in range(n_chunks * C)]
    return chunk_keys(SMALL, tokens), [tokens[i * C : (i + 1) * C] for i in range(n_chunks)]


def _put(c: Client, keys: list[bytes], tokens: list[list[int]] | None) -> int:
    return c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys], tokens=tokens)


def _in_sync(sub: Subscriber, c: Client) -> NodeView:
    """Wait until the events so far describe what the daemon holds; the view."""
    views: list[NodeView] = []

    def same() -> bool:
        views[:] = [NodeView().apply(sub.events())]
        return views[0].state() == daemon_state(c.ls())

    wait_for("the events to describe what the daemon holds", same, 20)
    return views[0]


@pytest.fixture
def subscribed(daemon_factory):
    """A daemon with KV events (2 MiB DRAM = 4 chunks, NVMe for 5) and a subscriber on it."""
    d = daemon_factory(dram="2MiB", nvme="3MiB", extra=(*EVENTS, "--node-id", "node-a"))
    sub = Subscriber(*endpoints(d.banner))
    yield d, sub
    sub.close()


def test_stores_demotions_promotions_and_evictions_appear_in_order_on_their_media(subscribed):
    d, sub = subscribed
    keys, tokens = _prompt(12, seed=1)
    with Client.connect(d.socket) as c:
        assert _put(c, keys, tokens) == 12  # through a 4-chunk DRAM and a 5-chunk NVMe: demotions, evictions
        sub.wait_connected()
        sub.replay(0)  # what was published before the subscription took hold
        view = _in_sync(sub, c)
        events = sub.events()
        assert type(events[0]).__name__ == "AllBlocksCleared"  # the start: forget this node's past
        first = {}
        for tier, e in view.stored:
            first.setdefault(e.block_hashes[0], (tier, e))
        for i, k in enumerate(keys):  # every chunk's first copy: DRAM, with its tokens and parent
            tier, e = first[k]
            assert tier == "dram" and e.token_ids == tokens[i] and e.block_size == C
            assert e.parent_block_hash == (keys[i - 1] if i else None)
        nvme_stored = [e for tier, e in view.stored if tier == "nvme"]
        assert nvme_stored and all(e.token_ids == tokens[keys.index(e.block_hashes[0])] for e in nvme_stored)
        log = list(view.log)
        for j, (op, tier, k) in enumerate(log):  # a DRAM copy is dropped only once written down
            if (op, tier) == ("-", "dram"):
                assert ("+", "nvme", k) in log[:j], k.hex()
        assert any(op == "-" and t == "nvme" for op, t, _ in log)  # NVMe was full: its coldest copies went

        on_nvme = sorted(view.copies["nvme"] - view.copies["dram"], key=keys.index)
        k = on_nvme[0]
        with c.get(SMALL, [k]) as lease:  # a promotion
            assert lease.count == 1
        view = _in_sync(sub, c)
        assert ("+", "dram", k) in view.log[len(log):]
        promoted = [e for tier, e in view.stored if e.block_hashes == [k] and tier == "dram"][-1]
        assert promoted.token_ids == tokens[keys.index(k)] and promoted.parent_block_hash == keys[keys.index(k) - 1]

        before = len(view.log)
        c.evict(keys=[k], tier="nvme")
        view = _in_sync(sub, c)
        assert ("-", "nvme", k) in view.log[before:] and k not in view.copies["nvme"]
        c.evict(everything=True)
        view = _in_sync(sub, c)
        assert view.state() == {}
        batches = sub.contiguous()
        assert sub.topics == {b"node-a"} and len(batches) == len(sub.batches)  # no gap
        stat = c.stat()["kv_events"]
        assert stat["batches"] >= len(batches) and stat["dropped"] == 0 and stat["topic"] == "node-a"


def test_a_late_subscriber_catches_up_through_replay(daemon_factory):
    d = daemon_factory(dram="2MiB", nvme="3MiB", extra=EVENTS)
    pub, replay = endpoints(d.banner)
    keys, tokens = _prompt(6, seed=2)
    with Client.connect(d.socket) as c:
        _put(c, keys[:3], tokens[:3])  # nobody listens yet
        wait_for("those events to go out", lambda: (lambda s: s["records_published"] == s["recorded"])(
            c.stat()["kv_events"]), 10)
        sub = Subscriber(pub, replay)
        try:
            more, more_tokens = _prompt(3, seed=3)
            _put(c, more, more_tokens)
            sub.wait_connected()
            assert sub.first_live > 0 and sub.contiguous() == []  # it missed the first batches
            got = sub.replay(0)
            assert got == list(range(len(got))) and got[-1] >= sub.first_live - 1  # everything missed, in order
            view = _in_sync(sub, c)
            assert {e.block_hashes[0] for t, e in view.stored if t == "dram"} == set(keys[:3]) | set(more)
            tail = sub.replay(1)  # from the middle (first_live > 0: there are 2 batches at least)
            assert tail == list(range(1, 1 + len(tail))) and tail[-1] >= sub.first_live
        finally:
            sub.close()


def test_a_restart_announces_what_the_node_still_holds(daemon_factory, tmp_path):
    """Shutdown: the node's DRAM and NVMe copies leave with it. Start: AllBlocksCleared, then the
    NVMe copies found on disk (their tokens were not kept on disk: empty, block size unknown
    until an engine registers the layout)."""
    nvme_dir = tmp_path / "kept"
    d = daemon_factory(name="r", dram="2MiB", nvme="3MiB", extra=EVENTS, nvme_dir=nvme_dir)
    keys, tokens = _prompt(3, seed=4)
    sub = Subscriber(*endpoints(d.banner))
    try:
        with Client.connect(d.socket) as c:
            _put(c, keys, tokens)
            sub.wait_connected()
            sub.replay(0)
            _in_sync(sub, c)
        d.stop()
        wait_for("the shutdown's removals", lambda: NodeView().apply(sub.events()).state() == {}, 20)
        held_at_stop = {k for op, t, k in NodeView().apply(sub.events()).log if op == "+" and t == "nvme"}
    finally:
        sub.close()
    d2 = daemon_factory(name="r", dram="2MiB", nvme="3MiB", extra=EVENTS, nvme_dir=nvme_dir)
    sub = Subscriber(*endpoints(d2.banner))
    try:
        with Client.connect(d2.socket) as c:
            wait_for("the restart's batches", lambda: sub.replay(0) and sub.contiguous(), 10)
            view = _in_sync(sub, c)
            assert type(sub.events()[0]).__name__ == "AllBlocksCleared"
            assert view.copies["nvme"] == set(keys) == held_at_stop
            assert all(e.token_ids == [] and e.block_size == 0 and e.parent_block_hash is None for _, e in view.stored)
    finally:
        sub.close()
