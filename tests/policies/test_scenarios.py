"""Small hand-worked scenarios, one behaviour each, for the policies beyond LRU: the numbers in
each docstring are worked out from the policy's definition, not read off the code."""
from __future__ import annotations

import pytest

from tierd.policies.arc import ARCPolicy
from tierd.policies.prefix import PrefixLRUPolicy
from tierd.policies.reuse_gap import NEW, ONCE, TWICE, TWICE_FACTOR, ReuseGapPolicy, ReuseGaps
from tierd.policies.s3fifo import S3FIFOPolicy


def evict(policy, n=1):
    out = []
    for _ in range(n):
        victim = next(policy.candidates())
        policy.remove(victim)
        out.append(victim)
    return out


def test_arc_adapts_p_by_the_ghost_ratio():
    """c = 6; 1 reused (T2), 2..6 evicted from T1 into B1, then 1 from T2 into B2. Ghost hits on
    2 and 3 (B1) raise p by max(|B2|/|B1|, 1) = 1 each; a hit on 1 (B2) with |B1| = 3, |B2| = 1
    lowers it by 3, clamped at 0."""
    arc = ARCPolicy()
    for k in range(1, 7):
        arc.touch(k)
    arc.touch(1)
    assert evict(arc, 6) == [2, 3, 4, 5, 6, 1] and arc.ghosts() == ([2, 3, 4, 5, 6], [1])
    arc.touch(2)
    arc.touch(3)
    assert arc.p == 2
    arc.touch(1)
    assert arc.p == 0 and arc.ghosts() == ([4, 5, 6], [])
    assert list(arc.candidates()) == [2, 3, 1]  # T1 is empty: T2, least recently used first


def test_arc_grows_p_faster_when_b2_is_larger():
    """c = 7; 1..6 reused; 7 is evicted to B1, then 1..5 to B2: a hit on 7 raises p by
    |B2|/|B1| = 5."""
    arc = ARCPolicy()
    for k in list(range(1, 7)) * 2 + [7]:
        arc.touch(k)
    assert evict(arc, 6) == [7, 1, 2, 3, 4, 5]
    arc.touch(7)
    assert arc.p == 5 and arc.c == 7


def test_s3fifo_promotes_used_keys_and_forgets_the_rest():
    """Ten keys in the small FIFO (share 10% of 10 = 1): 0 and 1 were used again, so eviction
    moves them to the main FIFO and takes 2, which becomes a ghost; when 2 comes back it goes
    straight to the main FIFO."""
    s3 = S3FIFOPolicy()
    for k in range(10):
        s3.touch(k)
    s3.touch(0)
    s3.touch(1)
    assert list(s3.candidates()) == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert evict(s3) == [2] and s3.ghosts() == [2]
    s3.touch(2)
    assert s3.ghosts() == [] and list(s3.candidates())[-3:] == [0, 1, 2]


def test_s3fifo_main_gives_a_used_key_another_round():
    """Everything is in the main FIFO (ghost returns); 0 was used since, so it is reinserted with
    its count lowered and 1 goes first."""
    s3 = S3FIFOPolicy()
    for k in range(3):
        s3.touch(k)
    assert evict(s3, 3) == [0, 1, 2]
    for k in range(3):
        s3.touch(k)  # ghosts: into the main FIFO
    s3.touch(0)
    assert list(s3.candidates()) == [1, 2, 0]


def test_prefix_evicts_the_oldest_prompt_tail_first_and_keeps_shared_heads():
    """Prompt A = [s, a1, a2], then B = [s, b1]: s was last used by B, so A's own chunks go first,
    deepest first, then B's, deepest first."""
    prefix = PrefixLRUPolicy()
    for depth, key in enumerate(["s", "a1", "a2"]):
        prefix.touch(key, "", depth)
    for depth, key in enumerate(["s", "b1"]):
        prefix.touch(key, "", depth)
    assert list(prefix.candidates()) == ["a2", "a1", "b1", "s"]


def prompt(policy, keys):
    for depth, key in enumerate(keys):
        policy.touch(key, "", depth)


def test_reuse_gap_climbs_a_shelf_per_use_and_loses_tails_first():
    """Prompt [s, a1, a2] then [s, a1, b]: s and a1 were reused (ONCE), a2 and b were not; with
    no gap seen yet the bonus is 0, so the order is prefix-LRU's: a2 (oldest request), then the
    second request deepest first, s last."""
    policy = ReuseGapPolicy()
    prompt(policy, ["s", "a1", "a2"])
    prompt(policy, ["s", "a1", "b"])
    assert [policy.shelf_of(k) for k in ("s", "a1", "a2", "b")] == [ONCE, ONCE, NEW, NEW]
    assert list(policy.candidates()) == ["a2", "b", "a1", "s"]
    prompt(policy, ["s"])
    assert policy.shelf_of("s") == TWICE and policy.bonus == [0.0, 0.0, 0.0]


def test_reuse_gap_keeps_reused_chunks_longer_by_the_observed_gap():
    """Two-chunk prompts, one a request. x heads requests 0, 4 and 8; the reuse in request 8 of
    a chunk already reused is the one gap observed: 4 requests, so the bonus is the upper edge
    of the bin holding 4 (4.66). x, now reused twice, gets 1.5 times that (6.99): last used in
    request 8, it ranks after never-reused chunks of requests up to 14 and before those of 15."""
    policy = ReuseGapPolicy(period=1)
    prompt(policy, ["x", "t0"])
    for r in range(3):
        prompt(policy, [f"p{r}", f"q{r}"])
    prompt(policy, ["x", "t1"])  # first reuse (NEW -> ONCE): no gap recorded, x was not proven
    for r in range(3, 6):
        prompt(policy, [f"p{r}", f"q{r}"])
    prompt(policy, ["x", "t2"])
    bonus = ReuseGaps.upper_edge(ReuseGaps.bin_of(4))
    assert policy.bonus[ONCE] == bonus and policy.bonus[TWICE] == TWICE_FACTOR * bonus
    assert 4 < bonus < 5
    for r in range(8):
        prompt(policy, [f"n{r}", f"m{r}"])  # requests 9..16
    order = list(policy.candidates())
    assert order[:4] == ["t0", "q0", "p0", "q1"]  # never reused: oldest request first, deepest first
    assert policy.shelf_of("x") == TWICE and order[order.index("x") - 2:order.index("x") + 2] == ["m5", "n5", "x", "m6"]


def test_reuse_gap_ghosts_return_as_reused():
    policy = ReuseGapPolicy()
    prompt(policy, ["a", "b"])
    policy.remove("b")
    assert policy.ghosts() == ["b"]
    prompt(policy, ["a", "b"])
    assert policy.shelf_of("b") == ONCE and policy.ghosts() == []


@pytest.mark.parametrize("gaps, q, expected",
                         [([5] * 10, 0.9, 5), ([1] * 9 + [100], 0.9, 1), ([1] * 8 + [100] * 2, 0.9, 100)])
def test_reuse_gaps_quantile_is_the_bin_holding_it(gaps, q, expected):
    est = ReuseGaps(quantile=q, period=len(gaps))
    for g in gaps:
        est.add(g)
    assert est.quantile == ReuseGaps.upper_edge(ReuseGaps.bin_of(expected))
    assert ReuseGaps.upper_edge(ReuseGaps.bin_of(expected) - 1) <= expected < est.quantile


def test_reuse_gaps_refuses_nonsense():
    with pytest.raises(ValueError):
        ReuseGaps(quantile=0)
    with pytest.raises(ValueError):
        ReuseGaps(period=0)


@pytest.mark.parametrize("make, bound", [(ARCPolicy, 3 - 2), (S3FIFOPolicy, int(0.9 * 3)), (ReuseGapPolicy, 4 * 3)])
def test_ghosts_are_bounded_by_the_most_keys_held(make, bound):
    """At most three keys held at once (c = 3), two of them all along, a hundred evicted: ARC
    keeps |T1| + |B1| <= c (one ghost beside the two in T1), S3-FIFO as many as its main FIFO's
    share (0.9c, so 2), reuse-gap 4c; the newest are kept."""
    policy = make()
    policy.touch(-1)
    policy.touch(-2)
    for k in range(100):
        policy.touch(k)
        policy.remove(k)
    ghosts = policy.ghosts()
    flat = ghosts[0] + ghosts[1] if isinstance(ghosts, tuple) else ghosts
    assert len(flat) == bound and flat[-1] == 99
