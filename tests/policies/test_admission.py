"""Admission filters (issue 22, item 3): each decision against a reference model of the rule it
implements, the counters, the constructor's checks, the shadow models the adaptive filter learns
from, and what `simulate_tiers` shows a filter."""
from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.mrc.simulate import simulate_tiers
from tierd.policies.admission import (
    ADMISSIONS, LIMITS, AdaptiveAdmission, AdmitAll, ReuseAdmission, _key_hash, _ShadowTier, make_admission)
from tierd.policies.lru import LRUPolicy

#: (key, hits, depth, stored) departures from DRAM over a few keys, so keys come back.
DEPARTURES = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2), st.integers(0, 40), st.booleans()),
                      max_size=120)


class ReferenceRule:
    """The depth-limited reuse rule, written plainly: a list for the ghosts, newest last."""

    def __init__(self, ghosts: int) -> None:
        self.ghosts = ghosts
        self.declined: list[Hashable] = []

    def admits(self, key: Hashable, hits: int, depth: int, limit: int | None) -> bool:
        if hits > 0 or limit is None or depth < limit:
            return True
        if key in self.declined:
            self.declined.remove(key)
            return True
        self.declined.append(key)
        del self.declined[:-self.ghosts]
        return False


@settings(max_examples=150, deadline=None)
@given(DEPARTURES, st.integers(1, 5))
def test_reuse_admits_a_chunk_used_twice_and_remembers_its_last_declines(departures, ghosts):
    reuse, ref = ReuseAdmission(ghosts), ReferenceRule(ghosts)
    asked = 0
    for key, hits, depth, stored in departures:
        got = reuse.admits(key, hits, depth=depth, stored=stored)
        if stored:
            assert got  # nothing is written; the call only informs
            continue
        asked += 1
        assert got == ref.admits(key, hits, depth, 0)
    assert reuse.admitted + reuse.declined == asked
    assert reuse.declined == asked - reuse.admitted


@settings(max_examples=150, deadline=None)
@given(DEPARTURES, st.integers(1, 6), st.integers(1, 5), st.sampled_from([1.0, 0.5]), st.sampled_from([0.005, 0.9]))
def test_adaptive_decides_by_the_reuse_rule_at_its_current_limit(departures, capacity, ghosts, sample, loss):
    """Whatever limit the models pick, each decision is the depth-limited reuse rule at the limit
    in force after the call, over the filter's own ghost list. (A loss of 0.9 lets the limit
    move on streams this short.)"""
    adaptive = AdaptiveAdmission(capacity, 1, sample=sample, ghosts=ghosts, epoch=1, loss=loss)
    ref = ReferenceRule(ghosts)
    asked = 0
    for key, hits, depth, stored in departures:
        got = adaptive.admits(key, hits, depth=depth, stored=stored)
        assert adaptive.limit in LIMITS
        if stored:
            assert got
            continue
        asked += 1
        assert got == ref.admits(key, hits, depth, adaptive.limit)
    assert adaptive.admitted + adaptive.declined == asked


class ReferenceShadow:
    """`_ShadowTier` written plainly: an LRU list that may run over its capacity by the writes
    among the last `delay` departures."""

    def __init__(self, limit: int | None, capacity: int, ghosts: int, delay: int) -> None:
        self.limit, self.capacity, self.delay = limit, capacity, delay
        self.keys: list[Hashable] = []  # least recent first
        self.rule = ReferenceRule(ghosts)
        self.wrote: list[int] = []
        self.hits = self.writes = 0

    def leave(self, key: Hashable, hits: int, depth: int) -> None:
        wrote = 0
        if key in self.keys:
            self.keys.remove(key)
            self.keys.append(key)
            self.hits += 1
        elif self.rule.admits(key, hits, depth, self.limit):
            self.keys.append(key)
            self.writes += 1
            wrote = 1
        self.wrote.append(wrote)
        late = sum(self.wrote[-self.delay:]) if self.delay else 0
        while len(self.keys) > self.capacity + late:
            self.keys.pop(0)


@settings(max_examples=150, deadline=None)
@given(DEPARTURES, st.sampled_from(LIMITS), st.integers(1, 5), st.integers(1, 4), st.integers(0, 3))
def test_a_shadow_tier_counts_what_an_lru_of_the_tier_would_have(departures, limit, capacity, ghosts, delay):
    model, ref = _ShadowTier(limit, capacity, ghosts, delay), ReferenceShadow(limit, capacity, ghosts, delay)
    for key, hits, depth, _ in departures:
        model.leave(key, hits, depth)
        ref.leave(key, hits, depth)
        assert model.hits == [ref.hits] * len(model.hits)
        assert model.writes == [ref.writes] * len(model.writes)
        assert model.full() == (len(ref.keys) >= capacity)


def test_all_admits_everything_and_counts_only_what_it_was_asked():
    f = AdmitAll()
    assert all(f.admits(k, 0, depth=k) for k in range(5))
    assert f.admits(9, 0, stored=True)
    assert (f.admitted, f.declined) == (5, 0)


def test_reuse_keeps_its_old_positional_call():
    """The store calls `admits(key, hits)`: still the second-use rule."""
    f = ReuseAdmission(4)
    assert not f.admits(b"k", 0) and f.admits(b"k", 0) and f.admits(b"j", 1)
    assert (f.admitted, f.declined) == (2, 1)


def _cold_stream(n: int, stored_every: int = 0) -> list[tuple[int, int, int, bool]]:
    """Departures of chunks never seen again, each at depth 40; every `stored_every`-th reports
    an already stored chunk (so the filter knows it is told about those)."""
    return [(i, 0, 40, bool(stored_every) and i % stored_every == 0) for i in range(n)]


def test_adaptive_admits_everything_while_it_is_never_told_of_a_stored_chunk():
    f = AdaptiveAdmission(64, 16, sample=1.0, epoch=8)
    for key, hits, depth, stored in _cold_stream(5000):
        assert f.admits(key, hits, depth=depth, stored=stored)
    assert f.limit is None and f.declined == 0


def test_adaptive_stops_writing_chunks_nobody_reads_again():
    """(A model must see a few hundred departures per half-life before a loss of 0.005 of them
    can be told from none: 64 chunks, not 16.)"""
    f = AdaptiveAdmission(64, 16, sample=1.0, epoch=8)
    for key, hits, depth, stored in _cold_stream(5000, stored_every=97):
        f.admits(key, hits, depth=depth, stored=stored)
    assert f.limit is not None and f.limit <= 40  # the deep one-time chunks are declined now
    assert f.declined > 2500


def _replay(f: AdaptiveAdmission, units: int, capacity: int) -> int:
    """Per unit: a chunk used in DRAM (admitted by every limit), three deep chunks never read
    again, and a deep chunk that comes back two units later, while a tier of `capacity` still
    holds it if it was written. Replayed through `f` over an LRU tier; returns the tier's hits."""
    tier: OrderedDict[tuple[str, int], None] = OrderedDict()
    hits = 0
    for i in range(units):
        departures = [(("used", i), 2), (("once", 3 * i), 0), (("once", 3 * i + 1), 0), (("once", 3 * i + 2), 0),
                      (("back", i), 0)] + ([(("back", i - 2), 0)] if i >= 2 else [])
        for key, used in departures:
            stored = key in tier
            hits += stored
            if stored:
                tier.move_to_end(key)
            if f.admits(key, used, depth=0 if used else 40, stored=stored) and not stored:
                tier[key] = None
                while len(tier) > capacity:
                    tier.popitem(last=False)
    return hits


def test_adaptive_keeps_writing_chunks_that_come_back_while_the_tier_would_hold_them():
    """Declining the deep chunks would save 3 writes in 5 and lose the returning chunk's hit
    (1 reference in 9): too dear, so it keeps admitting everything and every return hits."""
    f = AdaptiveAdmission(64, 0, sample=1.0, epoch=8)
    hits = _replay(f, 1500, 64)
    assert f.limit is None and f.declined == 0
    assert hits == 1498


def test_adaptive_declines_deep_chunks_when_their_hits_are_within_the_loss_allowed():
    """The same stream with a loss of 0.2 allowed: declining the deep chunks costs 1 reference
    in 9, so it declines them, writes fewer and loses returns."""
    f = AdaptiveAdmission(64, 0, sample=1.0, epoch=8, loss=0.2)
    hits = _replay(f, 1500, 64)
    assert f.limit is not None and f.limit <= 40 and f.declined > 1500
    assert hits < 1498


def test_the_sampling_hash_is_the_same_in_every_process():
    """`hash()` of bytes is salted per process; the sample must not be."""
    assert _key_hash(b"chunk") == zlib.crc32(b"chunk")
    assert _key_hash(7) == _key_hash(7) and 0 <= _key_hash(2**70) < 2**32
    assert _key_hash(("a", 1)) == zlib.crc32(repr(("a", 1)).encode())


def test_two_filters_fed_the_same_departures_decide_the_same():
    a, b = AdaptiveAdmission(32, 8, sample=0.5, epoch=4), AdaptiveAdmission(32, 8, sample=0.5, epoch=4)
    stream = [(i % 50 if i % 3 else i, i % 2, i % 45, i % 7 == 0) for i in range(3000)]
    assert [a.admits(k, h, depth=d, stored=s) for k, h, d, s in stream] == \
           [b.admits(k, h, depth=d, stored=s) for k, h, d, s in stream]


@pytest.mark.parametrize("kwargs, word", [
    ({"capacity": 0}, "capacity"), ({"capacity": 2.5}, "capacity"), ({"capacity": True}, "capacity"),
    ({"upper": -1}, "upper"), ({"ghosts": 0}, "ghosts"), ({"epoch": 0}, "epoch"),
    ({"sample": 0.0}, "sample"), ({"sample": 1.5}, "sample"), ({"loss": -0.1}, "loss"), ({"loss": 1.0}, "loss"),
])
def test_adaptive_refuses_a_bad_size_or_rate_naming_it(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AdaptiveAdmission(**kwargs)


def test_reuse_refuses_an_empty_ghost_list():
    with pytest.raises(ValueError, match="ghosts=0"):
        ReuseAdmission(0)


def test_make_admission_sizes_the_adaptive_filter_and_knows_every_name():
    f = make_admission("adaptive", 1000, 250)
    assert isinstance(f, AdaptiveAdmission) and (f.capacity, f.upper) == (1000, 250)
    assert isinstance(make_admission("reuse", 1000, 250), ReuseAdmission)
    assert {type(make_admission(name)) for name in ADMISSIONS} == {AdmitAll, ReuseAdmission, AdaptiveAdmission}
    with pytest.raises(ValueError, match="'lfu'.*all, reuse, adaptive"):
        make_admission("lfu")


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.admitted = self.declined = 0
        self.calls: list[tuple[Hashable, int, int, bool]] = []

    def admits(self, key: Hashable, hits: int, *, depth: int = 0, stored: bool = False) -> bool:
        self.calls.append((key, hits, depth, stored))
        return True


def test_simulate_tiers_shows_every_dram_victim_with_its_depth_and_whether_nvme_holds_it():
    """Chained ids: a key's depth is its index in every prompt it appears in."""
    prompts = [[1, 2, 3], [4, 5], [1, 2, 3, 6], [4, 5, 7], [1, 2], [8, 9, 10]]
    depth_of = {k: i for p in prompts for i, k in enumerate(p)}
    rec = Recorder()
    r = simulate_tiers(prompts, LRUPolicy(), 2, LRUPolicy(), 100, rec)
    assert rec.calls, "DRAM of 2 chunks must evict"
    assert all(depth == depth_of[key] for key, _, depth, _ in rec.calls)
    written = [key for key, _, _, stored in rec.calls if not stored]
    assert r.lower_writes == len(written) == len(set(written))  # written once, then held (NVMe is large)
    seen: set[Hashable] = set()
    for key, _, _, stored in rec.calls:
        assert stored == (key in seen)
        seen.add(key)
    assert r.lower_hits > 0


def test_simulate_tiers_writes_only_what_the_filter_admits():
    prompts = [[i, i + 100] for i in range(50)] * 2
    declining = ReuseAdmission(1000)
    r = simulate_tiers(prompts, LRUPolicy(), 4, LRUPolicy(), 400, declining)
    assert r.lower_writes == declining.admitted
    assert declining.declined > 0
