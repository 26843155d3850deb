"""KV events of the shared object tier, with two daemons on one SeaweedFS bucket: the node that
uploads a chunk announces its copy there (STORAGE, REMOTE) and its deletion; a node that only
finds another's object in the bucket announces nothing of it (its writer did, and a router
credits a bucket copy to every node on the bucket), only the DRAM copy it reads it into."""
from __future__ import annotations

from tests.conftest import SMALL, payload_for
from tests.events.subscriber import MEDIA, NodeView, Subscriber, daemon_state, endpoints
from tests.waiting import wait_for
from tierd.client import Client
from tierd.keys import chunk_keys

EVENTS = ("--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0")
C = SMALL.chunk_tokens


def _view(sub: Subscriber) -> NodeView:
    return NodeView().apply(sub.events())


def test_uploads_and_their_deletion_are_announced_by_their_writer_only(object_daemons, object_url):
    tokens = [(i * 13) % 30000 for i in range(3 * C)]
    keys = chunk_keys(SMALL, tokens)
    per_chunk = [tokens[i * C : (i + 1) * C] for i in range(3)]
    a = object_daemons("ev-a", object_url, extra=EVENTS)
    sub_a = Subscriber(*endpoints(a.banner))
    try:
        with Client.connect(a.socket) as c:
            c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys], tokens=per_chunk)
            sub_a.wait_connected()
            sub_a.replay(0)
            wait_for("the uploads' events", lambda: _view(sub_a).copies["object"] == set(keys), 30)
            view = _view(sub_a)
            assert view.state() == daemon_state(c.ls())
            uploads = [e for t, e in view.stored if t == "object"]
            assert sorted(e.block_hashes[0] for e in uploads) == sorted(keys)  # each once (workers upload in parallel)
            assert all((e.medium, e.locality) == MEDIA["object"] == ("STORAGE", "REMOTE") for e in uploads)
            for e in uploads:  # with the tokens and parent the put gave
                i = keys.index(e.block_hashes[0])
                assert e.token_ids == per_chunk[i] and e.parent_block_hash == (keys[i - 1] if i else None)
            for k in keys:  # the DRAM copy came first
                assert view.log.index(("+", "dram", k)) < view.log.index(("+", "object", k))

            c.evict(keys=[keys[0]], tier="object")
            wait_for("the deletion's event", lambda: ("-", "object", keys[0]) in _view(sub_a).log, 20)

        b = object_daemons("ev-b", object_url, extra=EVENTS)
        sub_b = Subscriber(*endpoints(b.banner))
        try:
            with Client.connect(b.socket) as c:
                assert c.lookup(keys[1:]).prefix == 2  # found in the bucket: indexed, not announced
                with c.get(SMALL, keys[1:2]) as lease:  # read into b's DRAM: that copy is b's
                    assert lease.count == 1
                c.evict(keys=[keys[2]], tier="object")  # forgotten by b, not deleted: nothing to say
                # read into DRAM, and copied down to NVMe (an object-tier hit lands there too)
                want = [("+", "dram", keys[1]), ("+", "nvme", keys[1])]
                wait_for("b's promotion", lambda: sub_b.replay(0) and _view(sub_b).log == want, 20)
                view = _view(sub_b)
                assert not any(t == "object" for _, t, _ in view.log)  # no object-tier event at all
                assert view.stored[0][1].token_ids == []  # b never saw the put's tokens
        finally:
            sub_b.close()
    finally:
        sub_a.close()
