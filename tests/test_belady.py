"""Belady's MIN (tierd.mrc.belady) against an exhaustive search over every eviction choice, the
properties an optimum must have, and the figures the issue quotes for the Mooncake traces."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.mrc.belady import belady, belady_refs, next_uses, opt_curves
from tierd.mrc.references import flatten_requests
from tierd.mrc.simulate import simulate
from tierd.mrc.traces import read_mooncake
from tierd.policies.lru import LRUPolicy

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"


def brute_force_block_hits(requests: list[list[int]], capacity: int) -> int:
    """The most block hits any sequence of eviction choices gets, by trying them all.

    Same model as the simulator: a missed chunk is always inserted; while the tier is full, one
    of the chunks already cached leaves (every choice is tried)."""
    flat = tuple(k for r in requests for k in r)

    @lru_cache(maxsize=None)
    def best(t: int, cache: frozenset) -> int:
        if t == len(flat):
            return 0
        key = flat[t]
        if key in cache:
            return 1 + best(t + 1, cache)
        if len(cache) < capacity:
            return best(t + 1, cache | {key})
        return max(best(t + 1, (cache - {victim}) | {key}) for victim in cache)

    return best(0, frozenset())


small_requests = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=4), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(small_requests, st.integers(1, 4))
def test_min_gets_the_brute_force_optimum(requests, capacity):
    result = belady(requests, [capacity])[0]
    assert result.block_hits == brute_force_block_hits(requests, capacity)
    assert result.references == sum(len(r) for r in requests)


@st.composite
def chained_requests(draw):
    """Requests over a small prefix tree: a key names its whole prefix, as in the Mooncake traces."""
    count = draw(st.integers(1, 30))
    ids: dict[tuple[int, ...], int] = {}
    out = []
    for _ in range(count):
        path = tuple(draw(st.lists(st.integers(0, 2), min_size=1, max_size=6)))
        out.append([ids.setdefault(path[:i + 1], len(ids)) for i in range(len(path))])
    return out


@settings(max_examples=150, deadline=None)
@given(st.one_of(chained_requests(), st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=6), min_size=1, max_size=30)))
def test_min_is_monotone_in_capacity_and_never_below_lru(requests):
    caps = list(range(1, 20))
    results = belady(requests, caps)
    blocks = [r.block_hits for r in results]
    assert blocks == sorted(blocks)
    for r in results:
        lru = simulate(requests, LRUPolicy(), r.capacity)
        assert r.block_hits >= lru.block_hits
        # no policy's prefix hits exceed the optimum's block hits
        assert lru.prefix_hits <= r.block_hits
        assert r.prefix_hits <= r.block_hits
    distinct = len({k for r in requests for k in r})
    if distinct <= caps[-1]:  # room for every key: only first references miss
        assert results[-1].block_hits == sum(map(len, requests)) - distinct


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 8), max_size=60))
def test_next_uses_point_at_the_next_reference_of_the_same_key(keys):
    nxt = next_uses(np.asarray(keys, dtype=np.int64))
    for t, k in enumerate(keys):
        later = [u for u in range(t + 1, len(keys)) if keys[u] == k]
        assert nxt[t] == (later[0] if later else len(keys))


def test_prefix_hits_count_only_the_leading_run():
    # capacity 2: after [1, 2], request [3, 2] misses 3 (evicting 1, never used again) then hits 2
    result = belady([[1, 2], [3, 2]], [2])[0]
    assert (result.block_hits, result.prefix_hits) == (1, 0)
    result = belady([[1, 2], [1, 2]], [2])[0]
    assert (result.block_hits, result.prefix_hits) == (2, 2)


def test_byte_keys_and_curves():
    requests = [[b"a", b"b"], [b"a", b"c"], [b"a", b"b"]]
    block, prefix = opt_curves(flatten_requests(_Req(r) for r in requests), [1, 2, 3])
    assert block == [[1, 0.0], [2, 0.333333], [3, 0.5]]
    assert prefix == block


def test_fractional_capacities_are_refused():
    with pytest.raises(InvalidArgumentError, match="whole"):
        belady([[1, 2]], [1.5])


@pytest.mark.parametrize("trace, expected", [
    ("conversation", {5000: 0.341, 10000: 0.366, 20000: 0.366}),
    ("synthetic", {5000: 0.526, 10000: 0.618}),
])
def test_the_issue_table_is_reproduced(trace, expected):
    """Issue 22 quotes MIN at these capacities; on these chained traces the block and prefix
    ratios agree, so the table is both."""
    refs = flatten_requests(read_mooncake(TRACES / f"{trace}_trace.jsonl"))
    for r in belady_refs(refs, list(expected)):
        assert round(r.block_hit_ratio, 3) == expected[r.capacity]
        assert round(r.prefix_hit_ratio, 3) == expected[r.capacity]


class _Req:
    def __init__(self, keys):
        self.keys = keys
        self.sizes = [1] * len(keys)
