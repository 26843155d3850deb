"""A put's token ids and parent key (`Client.put(tokens=..., parent=...)`, the `reserve` RPC's
`tokens` and `parent`): bad ones are refused with one clear error before anything is reserved,
on any daemon, with events or without; good ones are what the events carry."""
from __future__ import annotations

import pytest

from tests.conftest import SMALL, payload_for
from tests.events.subscriber import NodeView, Subscriber, endpoints
from tests.waiting import wait_for
from tierd.client import Client
from tierd.errors import InvalidArgumentError
from tierd.keys import chunk_keys

C = SMALL.chunk_tokens
TOKENS = list(range(3 * C))
KEYS = chunk_keys(SMALL, TOKENS)
GOOD = [TOKENS[i * C : (i + 1) * C] for i in range(3)]

BAD = [
    ("one list per key", dict(tokens=GOOD[:2]), "one list of token ids per key"),
    ("a chunk short", dict(tokens=[GOOD[0], GOOD[1][:-1], GOOD[2]]), "tokens[1]: 255 token ids"),
    ("negative", dict(tokens=[GOOD[0], GOOD[1], [-1] + GOOD[2][1:]]), "tokens[2]: token ids are integers"),
    ("a float", dict(tokens=[[0.5] + GOOD[0][1:], GOOD[1], GOOD[2]]), "tokens[0]: token ids are integers"),
    ("too large", dict(tokens=[GOOD[0], [2**32] + GOOD[1][1:], GOOD[2]]), "tokens[1]: token ids are integers"),
    ("a string", dict(tokens=[GOOD[0], GOOD[1], "abc"]), "tokens[2]: token ids are integers"),
    ("parent of a first chunk", dict(tokens=GOOD, parent=KEYS[0]), "parent: the put starts at first_position 0"),
    ("parent too short", dict(parent=b"x" * 15, first_position=3), "keys are 16-byte"),
]


@pytest.mark.parametrize("events", [False, True], ids=["events-off", "events-on"])
def test_bad_tokens_and_parents_are_refused_and_store_nothing(daemon_factory, events):
    d = daemon_factory(extra=("--no-calibrate", *(("--kv-events", "tcp://127.0.0.1:0") if events else ())))
    with Client.connect(d.socket) as c:
        for what, kwargs, message in BAD:
            with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[")):
                c.put(SMALL, KEYS, **kwargs)
            assert c.lookup(KEYS).prefix == 0, what
        raw = dict(layout_id=SMALL.layout_id, namespace="default", keys=KEYS, nbytes=SMALL.chunk_bytes)
        with pytest.raises(InvalidArgumentError, match="'tokens' must be a list of list"):  # flat, not per key
            c._call("reserve", **raw, tokens=TOKENS)
        with pytest.raises(InvalidArgumentError, match="a verify reserve stores nothing"):
            c._call("reserve", **raw, verify=True, tokens=GOOD)
        assert c.stat()["tiers"][0]["used_bytes"] == 0  # nothing reserved was left behind
        with c.put(SMALL, KEYS, tokens=GOOD) as batch:  # the same put, well formed, goes through
            for i in batch.reserved:
                batch.view(i)[:] = payload_for(KEYS[i], SMALL.chunk_bytes)
            assert batch.commit() == 3


def test_a_put_that_continues_a_prompt_names_its_parent(daemon_factory):
    """Saves of one prompt come in pieces (chunked prefill): the second names the first's last key."""
    d = daemon_factory(extra=("--no-calibrate", "--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay",
                              "tcp://127.0.0.1:0"))
    sub = Subscriber(*endpoints(d.banner))
    try:
        with Client.connect(d.socket) as c:
            for start, end in ((0, 1), (1, 3)):
                with c.put(SMALL, KEYS[start:end], first_position=start, tokens=GOOD[start:end],
                           parent=KEYS[start - 1] if start else None) as batch:
                    for i in batch.reserved:
                        batch.view(i)[:] = payload_for(KEYS[start + i], SMALL.chunk_bytes)
                    batch.commit()
            wait_for("three stores", lambda: sub.replay(0) and len(NodeView().apply(sub.events()).stored) == 3, 20)
        stored = [e for _, e in NodeView().apply(sub.events()).stored]
        assert [e.parent_block_hash for e in stored] == [None, KEYS[0], KEYS[1]]
        assert [e.token_ids for e in stored] == GOOD
    finally:
        sub.close()


def test_a_tenants_events_name_its_own_keys_parents_included(daemon_factory):
    """A tenant's chunks are kept under keys of its own (`tierd.keys.tenant_keys`): its events
    name those, and the parent a put names is turned into one the same way."""
    import os

    from tierd.keys import tenant_keys

    d = daemon_factory(extra=("--no-calibrate", "--namespaces", f"{os.getuid()}:tenantA", "--kv-events",
                              "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0"))
    sub = Subscriber(*endpoints(d.banner))
    try:
        with Client.connect(d.socket) as c:
            with c.put(SMALL, KEYS[1:3], first_position=1, tokens=GOOD[1:3], parent=KEYS[0]) as batch:
                for i in batch.reserved:
                    batch.view(i)[:] = payload_for(KEYS[1 + i], SMALL.chunk_bytes)
                batch.commit()
            wait_for("two stores", lambda: sub.replay(0) and len(NodeView().apply(sub.events()).stored) == 2, 20)
        own = tenant_keys("tenantA", KEYS)
        stored = [e for _, e in NodeView().apply(sub.events()).stored]
        assert [(e.block_hashes[0], e.parent_block_hash) for e in stored] == [(own[1], own[0]), (own[2], own[1])]
    finally:
        sub.close()
