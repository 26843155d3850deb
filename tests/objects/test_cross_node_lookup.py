"""Whole-prefix lookups across nodes, on real daemons sharing a real bucket (SeaweedFS on
loopback): node A uploads a prompt's chunks, node B — which never saw them — learns how far the
prompt runs in the bucket in a few rounds of HEADs (`tierd.tiers.object.search`), and what it
then reads is verified, so a key it only inferred and that is not there is a miss, never data.

Chunks are tiny (512 bytes) so a 512-chunk prompt uploads in about a second. B has no NVMe
tier (a promoted chunk's copy down to NVMe would keep it busy when a test evicts it), and its
lookup budget is large so that "one lookup indexes it all" does not depend on how loaded the machine is;
bench/object_tier.py measures the default 50 ms budget.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import obstore
import pytest

from tests.conftest import payload_for
from tests.waiting import wait_for
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.tiers.object.bucket import open_store
from tierd.tiers.object.format import object_path

TINY = Layout("cross-node-lookup", "bfloat16", 1, 1, 8, chunk_tokens=16)  # 512-byte chunks
B_FLAGS = ("--object-lookup-budget", "10s")


def _tokens(seed: int, n_chunks: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, TINY.chunk_tokens * n_chunks)


def _object_tier(c: Client) -> dict[str, Any]:
    return next(t for t in c.stat()["tiers"] if t["name"] == "object")


def _uploaded(c: Client, n: int) -> Callable[[], bool]:
    def done() -> bool:
        t = _object_tier(c)
        return t["upload_queued"] == 0 and t["upload_inflight"] == 0 and t["chunks"] >= n
    return done


def _upload(c: Client, keys: list[bytes], payloads: Callable[[bytes], Any] | None = None) -> None:
    make = payloads or (lambda k: payload_for(k, TINY.chunk_bytes))
    c.put_chunks(TINY, keys, [make(k) for k in keys])
    wait_for("uploads", _uploaded(c, len(keys)), timeout=120)


def _read(c: Client, keys: list[bytes], expected: Callable[[bytes], Any] | None = None) -> int:
    """Lease the keys; assert every chunk served is the one written; return how many were served."""
    want = expected or (lambda k: payload_for(k, TINY.chunk_bytes))
    with c.get(TINY, keys) as lease:
        for i in range(lease.count):
            assert lease.view(i).tobytes() == bytes(np.asarray(want(keys[i]), dtype=np.uint8)), i
        return lease.count


def test_a_512_chunk_prefix_from_another_node_is_indexed_by_one_lookup(object_daemons, object_url):
    a = object_daemons("a", object_url)
    b = object_daemons("b", object_url, nvme="0", extra=B_FLAGS)
    w = object_daemons("w", object_url, nvme="0", extra=(*B_FLAGS, "--object-lookup-strategy", "walk"))
    keys = chunk_keys(TINY, _tokens(1, 512))
    with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb, Client.connect(w.socket) as cw:
        _upload(ca, keys)
        res = cb.lookup(keys)
        assert res.prefix == 512 and set(res.tiers) == {"object"}
        tb = _object_tier(cb)
        # two rounds: key 0, then 3, 15, 63, 255 and 511; the other 506 keys are inferred. (Before
        # bisect: 512 HEADs in 4 rounds, and no remote_rounds / remote_heads counters.)
        assert (tb["remote_lookups"], tb["remote_rounds"], tb["remote_heads"]) == (1, 2, 6)
        assert tb["remote_found"] == 512 and tb["remote_guessed"] == 506 and tb["lookup_strategy"] == "bisect"
        assert _read(cb, keys) == 512
        # the wave walk (still selectable) finds the same, asking every key in 4 rounds
        assert cw.lookup(keys).prefix == 512
        tw = _object_tier(cw)
        assert (tw["remote_rounds"], tw["remote_heads"], tw["lookup_strategy"]) == (4, 512, "walk")


def test_a_lookup_gives_exactly_the_length_of_the_shared_prefix(object_daemons, object_url):
    """Prompts that share their first n chunks with one A uploaded (and go on with chunks no one
    wrote): B finds exactly n, in at most 4 rounds; a prompt nowhere in the bucket costs one."""
    a = object_daemons("a", object_url)
    b = object_daemons("b", object_url, nvme="0", extra=B_FLAGS)
    uploaded = _tokens(2, 512)
    keys = chunk_keys(TINY, uploaded)
    with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb:
        _upload(ca, keys)
        for n in (0, 1, 2, 17, 511, 512):
            tail = _tokens(1000 + n, 512 - n) + 1  # differs from the uploaded prompt's tokens
            prompt = chunk_keys(TINY, np.concatenate([uploaded[: n * TINY.chunk_tokens], tail]))
            assert prompt[:n] == keys[:n] and (n == 512 or prompt[n] != keys[n])
            before = _object_tier(cb)["remote_rounds"]
            res = cb.lookup(prompt)
            rounds = _object_tier(cb)["remote_rounds"] - before
            assert res.prefix == n, n
            assert rounds == {0: 1, 512: 2}.get(n, rounds) and 1 <= rounds <= 4, (n, rounds)
            assert _read(cb, prompt) == n
            cb.evict(keys=keys)  # B forgets them (A's objects stay): the next prompt asks again


def test_a_hole_in_the_middle_is_a_shorter_hit_never_wrong_data(object_daemons, object_url, s3):
    a = object_daemons("a", object_url)
    b = object_daemons("b", object_url, nvme="0", extra=B_FLAGS)
    keys = chunk_keys(TINY, _tokens(3, 512))
    store = open_store(object_url, env=s3.env())
    with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb:
        _upload(ca, keys)
        obstore.delete(store, object_path(keys[300]))  # an object bisect never asks about
        obstore.delete(store, object_path(keys[1000 % 512]))  # 488: nor this one
        assert cb.lookup(keys).prefix == 512  # inferred present: the read will tell
        assert _read(cb, keys) == 300  # chunks 0..299, each verified; 300 is a miss
        tb = _object_tier(cb)
        assert tb["corrupt_deleted"] == 0  # a missing object is a miss, not a bad one
        assert cb.lookup(keys).prefix == 300  # the index forgot 300; the probe asks and finds it gone
        # a hole bisect asks about (63) ends the run there at once
        other = chunk_keys(TINY, _tokens(4, 100))
        _upload(ca, other)
        obstore.delete(store, object_path(other[63]))
        assert cb.lookup(other).prefix == 63
        assert _read(cb, other) == 63


def test_sizes_inferred_wrong_cost_a_read_not_the_object(object_daemons, object_url):
    """With a codec, objects differ in size and the inferred keys get a neighbour's size as the
    read's hint: every read still serves the right bytes, and no object is taken for bad."""
    a = object_daemons("a", object_url, extra=("--object-codec", "zstd"))
    b = object_daemons("b", object_url, nvme="0", extra=B_FLAGS)
    keys = chunk_keys(TINY, _tokens(5, 64))

    def payload(k: bytes) -> np.ndarray:  # compresses to a size of its own
        p = np.zeros(TINY.chunk_bytes, dtype=np.uint8)
        n = k[0] % 400 + 16
        p[:n] = payload_for(k, n)
        return p

    with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb:
        _upload(ca, keys, payload)
        assert cb.lookup(keys).prefix == 64
        assert _object_tier(cb)["remote_guessed"] > 0
        assert _read(cb, keys, payload) == 64
        tb = _object_tier(cb)
        assert tb["corrupt_deleted"] == 0 and tb["corrupt"] == 0


def test_a_miss_is_remembered_then_found_once_uploaded(object_daemons, object_url):
    a = object_daemons("a", object_url)
    b = object_daemons("b", object_url, nvme="0", extra=B_FLAGS)
    keys = chunk_keys(TINY, _tokens(6, 40))
    with Client.connect(a.socket) as ca, Client.connect(b.socket) as cb:
        assert cb.lookup(keys).prefix == 0
        first = _object_tier(cb)
        assert first["remote_rounds"] == 1
        assert cb.lookup(keys).prefix == 0  # remembered: no store request at all
        again = _object_tier(cb)
        assert again["remote_heads"] == first["remote_heads"] and again["remote_rounds"] == 1
        assert again["remote_negative_hits"] == first["remote_negative_hits"] + 1
        _upload(ca, keys)
        # the remembered miss lasts a second; then B asks again and finds all 40
        wait_for("B to find A's upload", lambda: cb.lookup(keys).prefix == 40, timeout=30, interval=0.1)
        assert _read(cb, keys) == 40


def test_a_bad_lookup_strategy_stops_the_daemon_at_start(object_daemons, object_url):
    """(Every source of the option is checked in tests/test_config.py.)"""
    with pytest.raises(RuntimeError, match="--object-lookup-strategy='sideways': use 'bisect'"):
        object_daemons("bad", object_url, extra=("--object-lookup-strategy", "sideways"))
