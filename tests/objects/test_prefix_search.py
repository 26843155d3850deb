"""The prefix probe's searches (`tierd.tiers.object.search`, `SharedTierProbe`) against a bucket in
memory that counts every HEAD and every round: how many round trips a lookup costs, and that
what it indexes is exactly the leading run (or, for keys bisect only inferred, a run that reads
then verify)."""
from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings, strategies as st

from tests.waiting import wait_until
from tierd.errors import InvalidArgumentError, ObjectTierUnavailable
from tierd.tiers.base import Found
from tierd.tiers.object.breaker import CircuitBreaker
from tierd.tiers.object.format import HEADER_BYTES
from tierd.tiers.object.probe import SharedTierProbe
from tierd.tiers.object.search import bisect, far_ahead, inside, walk

SIZE = HEADER_BYTES + 1000


class FakeBucket:
    """A `SizedTier` in memory. Keys in `never` are HEADs that never answer (a slow store), keys
    in `failing` raise as a store that is down would."""

    def __init__(self, present: list[bytes], sizes: dict[bytes, int] | None = None) -> None:
        self.sizes = {k: SIZE for k in present} | (sizes or {})
        self.breaker = CircuitBreaker("fake bucket")
        self.heads: list[bytes] = []
        self.cancelled = 0
        self.never: set[bytes] = set()
        self.failing: set[bytes] = set()

    async def stored_size(self, key: bytes) -> int | None:
        self.heads.append(key)
        if key in self.never:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        await asyncio.sleep(0)
        if key in self.failing:
            raise ObjectTierUnavailable("head: the fake store is down")
        return self.sizes.get(key)


def _keys(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def _probe(bucket: FakeBucket, found: list[Found], **kw) -> SharedTierProbe:
    return SharedTierProbe(bucket, found.extend, budget=5.0, **kw)


# ------------------------------------------------------------------ the positions asked


def test_after_key_zero_bisect_looks_far_ahead_then_at_the_last_key():
    assert far_ahead(1) == []
    assert far_ahead(2) == [1]
    assert far_ahead(17) == [3, 15, 16]
    assert far_ahead(512) == [3, 15, 63, 255, 511]
    assert far_ahead(100, step=2) == [1, 3, 7, 15, 31, 63, 99]


def test_inside_spreads_over_the_gap_or_takes_all_of_a_small_one():
    assert inside(3, 7, 16) == [4, 5, 6]
    assert inside(255, 511, 16) == [270, 285, 300, 315, 330, 345, 360, 375, 390, 405, 420, 435, 450, 465, 480, 495]
    assert inside(0, 1, 16) == []


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 4096), data=st.data())
def test_bisect_finds_every_run_length_in_a_few_rounds(n: int, data: st.DataObject) -> None:
    """Any run length r of any n keys, exactly: one round when key 0 is absent, two when all n
    are present, otherwise a number that grows with log(n) / log(17), never with n."""
    run = data.draw(st.integers(0, n))
    rounds: list[list[int]] = []
    emitted: list[tuple[int, int]] = []

    async def ask(positions: list[int]) -> dict[int, object]:
        rounds.append(positions)
        return {p: SIZE if p < run else None for p in positions}

    got = asyncio.run(bisect(n, ask, lambda a, b, sizes: emitted.append((a, b)), fanout=16))
    assert got == run
    assert sum(b - a for a, b in emitted) == run and all(a < b for a, b in emitted)
    assert [a for a, _ in emitted] == [0, *(b for _, b in emitted)][: len(emitted)]  # contiguous, in order
    if n == 0:
        assert rounds == []
    elif run == 0 or n == 1:
        assert rounds == [[0]]
    elif run == n:
        assert len(rounds) == 2
    else:
        assert 2 <= len(rounds) <= (4 if n <= 512 else 5)
    assert all(len(r) <= 16 for r in rounds)


@pytest.mark.parametrize("run", [0, 1, 2, 17, 100, 511, 512])
async def test_bisect_and_walk_agree_but_bisect_asks_far_less(run: int):
    keys = _keys(512)
    counts = {}
    for strategy in ("walk", "bisect"):
        bucket = FakeBucket(keys[:run])
        found: list[Found] = []
        probe = _probe(bucket, found, strategy=strategy)
        await probe.extend(keys)
        assert [f.key for f in found] == keys[:run]
        assert all(f.object_bytes == SIZE and f.payload_len == SIZE - HEADER_BYTES for f in found)
        counts[strategy] = (probe.rounds, probe.heads)
    rounds, heads = counts["bisect"]
    assert rounds <= 4 and heads <= 1 + 5 + 16 + 16
    if run >= 100:
        assert heads < counts["walk"][1] / 2


async def test_a_prefix_wholly_in_the_bucket_costs_two_rounds():
    keys = _keys(512)
    bucket = FakeBucket(keys)
    found: list[Found] = []
    probe = _probe(bucket, found)
    await probe.extend(keys)
    assert len(found) == 512 and probe.rounds == 2 and probe.heads == 6 and probe.guessed == 506
    assert probe.stats()["remote_rounds"] == 2 and probe.stats()["remote_heads"] == 6


async def test_a_prefix_nowhere_costs_one_head():
    keys = _keys(512)
    bucket = FakeBucket([])
    found: list[Found] = []
    probe = _probe(bucket, found)
    await probe.extend(keys)
    assert found == [] and probe.rounds == 1 and bucket.heads == [keys[0]]
    # key 0's miss is remembered: the same lookup again asks nothing
    await probe.extend(keys)
    assert len(bucket.heads) == 1 and probe.negative_hits == 1 and probe.rounds == 1


async def test_a_round_answers_once_decided_and_cancels_the_heads_it_no_longer_needs():
    """Key 3 is absent; the HEADs of 15, 63, 255 and 511 never answer (a slow store): the
    round must not wait for them, and they are cancelled, not left running."""
    keys = _keys(512)
    bucket = FakeBucket(keys[:3])
    bucket.never = {keys[p] for p in (15, 63, 255, 511)}
    found: list[Found] = []
    probe = _probe(bucket, found)
    await asyncio.wait_for(probe.extend(keys), 5)
    assert [f.key for f in found] == keys[:3] and probe.rounds == 3 and probe.budget_exceeded == 0
    await wait_until("the unneeded HEADs cancelled", lambda: bucket.cancelled == 4)


async def test_guessed_keys_take_the_size_of_the_nearest_asked_key_below():
    keys = _keys(8)
    sizes = {keys[0]: 600, keys[1]: 700, keys[3]: 900, keys[7]: 1300}
    bucket = FakeBucket(keys, sizes)
    found: list[Found] = []
    await _probe(bucket, found).extend(keys)  # asks 0, then 3 and 7
    assert [f.object_bytes for f in found] == [600, 600, 600, 900, 900, 900, 900, 1300]


async def test_a_hole_bisect_asks_about_ends_the_run_there():
    keys = _keys(512)
    bucket = FakeBucket(keys[:255] + keys[256:])  # 255 is asked in the second round
    found: list[Found] = []
    await _probe(bucket, found).extend(keys)
    assert [f.key for f in found] == keys[:255]


async def test_a_hole_bisect_does_not_ask_about_is_inferred_present():
    """What bisect cannot see: the store's read of key 300 is what turns this into a miss
    (tests/objects/test_cross_node_lookup.py checks that on real daemons)."""
    keys = _keys(512)
    bucket = FakeBucket(keys[:300] + keys[301:])
    found: list[Found] = []
    probe = _probe(bucket, found)
    await probe.extend(keys)
    assert len(found) == 512 and keys[300] not in bucket.heads


async def test_a_store_error_stops_the_search_and_is_not_remembered_as_a_miss():
    keys = _keys(512)
    bucket = FakeBucket(keys)
    bucket.failing = {keys[255]}
    found: list[Found] = []
    probe = _probe(bucket, found)
    await probe.extend(keys)
    assert [f.key for f in found] == keys[:64]  # 63 is the last present one asked below 255
    assert probe.rounds == 2 and probe.stats()["remote_negative_cached"] == 0


async def test_only_where_the_run_ends_is_remembered_missing():
    keys = _keys(512)
    bucket = FakeBucket(keys[:200])
    found: list[Found] = []
    probe = _probe(bucket, found)
    await probe.extend(keys)
    assert len(found) == 200
    assert probe._known_missing(keys[200])
    heads = len(bucket.heads)
    await probe.extend(keys[200:])  # the next lookup starts at the first miss: nothing asked
    assert len(bucket.heads) == heads and probe.negative_hits == 1
    probe.forget_miss(keys[200])  # this node uploaded it
    bucket.sizes[keys[200]] = SIZE
    await probe.extend(keys[200:])
    assert [f.key for f in found[200:]] == [keys[200]]


async def test_bisect_indexes_each_round_s_finds_before_the_search_ends():
    """The budget runs out during round 2: round 1's run is indexed already, the rest follows
    in the background, and a lookup that starts inside the running search joins it."""
    keys = _keys(512)
    bucket = FakeBucket(keys[:400])
    gate = asyncio.Event()
    real = bucket.stored_size
    asked = 0

    async def second_round_waits(key: bytes) -> int | None:
        nonlocal asked
        asked += 1
        if asked > 6:
            await gate.wait()
        return await real(key)

    bucket.stored_size = second_round_waits  # type: ignore[method-assign]
    found: list[Found] = []
    probe = SharedTierProbe(bucket, found.extend, budget=0.05)
    await probe.extend(keys)
    assert [f.key for f in found] == keys[:256] and probe.budget_exceeded == 1
    # the engine asks again: its prompt now misses locally from key 256 on, inside the running
    # search, which it joins (before, it started a second search there: one per lookup)
    asked_before = asked
    await probe.extend(keys[256:])
    assert probe.stats()["remote_walks"] == 1 and asked == asked_before and probe.budget_exceeded == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(*probe._walks.values()), 5)
    assert [f.key for f in found] == keys[:400]


async def test_within_its_budget_bisect_indexes_all_of_a_512_chunk_prefix_the_walk_a_part():
    """Every HEAD takes 60 ms (a round trip) and the budget is 230 ms. Before bisect the probe
    only walked, and answered with 336 of 512 keys (waves of 16, 64 and 256; the fourth wave
    ends after the budget): that is the defect. A sleep never ends early, so the walk cannot do
    better than 336 here; bisect needs two rounds."""
    keys = _keys(512)
    results = {}
    for strategy in ("walk", "bisect"):
        bucket = FakeBucket(keys)
        real = bucket.stored_size

        async def round_trip(key: bytes, real=real) -> int | None:
            await asyncio.sleep(0.06)
            return await real(key)

        bucket.stored_size = round_trip  # type: ignore[method-assign]
        found: list[Found] = []
        probe = SharedTierProbe(bucket, found.extend, budget=0.23, strategy=strategy)
        await probe.extend(keys)
        results[strategy] = len(found)
        await probe.close()
    assert results["bisect"] == 512 and results["walk"] <= 336


def test_an_unknown_strategy_is_refused():
    with pytest.raises(InvalidArgumentError, match="lookup strategy 'fast'"):
        SharedTierProbe(FakeBucket([]), lambda found: None, strategy="fast")


async def test_walk_still_asks_every_key_in_growing_waves():
    seen: list[list[int]] = []

    async def ask(positions: list[int]) -> dict[int, object]:
        seen.append(positions)
        return {p: SIZE if p < 90 else None for p in positions}

    assert await walk(100, ask, lambda a, b, s: None, first_wave=4, growth=4, max_wave=64) == 90
    assert [len(p) for p in seen] == [4, 16, 64, 16]
