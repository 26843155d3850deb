"""The reuse-gap policy on small generated traces of the two shapes it is meant for: its bonus
follows how soon reused chunks come back, so it neither lets a quick agent loop's finished
sessions squat (it stays with LRU) nor forgets slow conversations (it beats LRU)."""
from __future__ import annotations

import random

from tierd.mrc.simulate import simulate
from tierd.policies import make_policy
from tierd.policies.reuse_gap import ONCE


def sessions(*, live: int, total: int, turns: tuple[int, int], seed: int) -> list[list[int]]:
    """Interleaved sessions after a 2-chunk system prompt: each starts with 4-12 chunks of its
    own, grows by 1-3 chunks a turn and is re-read in full each turn; a request ends in a
    partial chunk (a fresh key) the next turn does not share."""
    rng, fresh = random.Random(seed), iter(range(1000, 10**9))
    active: list[list] = []
    out, started = [], 0
    while started < total or active:
        while len(active) < live and started < total:
            started += 1
            active.append([[0, 1] + [next(fresh) for _ in range(rng.randint(4, 12))], rng.randint(*turns)])
        i = rng.randrange(len(active))
        context, left = active[i]
        out.append(context + [next(fresh)])
        context.extend(next(fresh) for _ in range(rng.randint(1, 3)))
        active[i][1] = left - 1
        if left == 1:
            active.pop(i)
    return out


def test_an_agent_loop_keeps_a_small_bonus_and_stays_with_lru():
    """30 sessions at a time, each back about every 30 requests for 5-30 turns."""
    trace = sessions(live=30, total=100, turns=(5, 30), seed=3)
    lru, ours = make_policy("lru"), make_policy("reuse-gap")
    for capacity in (300, 600):
        assert simulate(trace, ours, capacity).prefix_hit_ratio >= simulate(trace, lru, capacity).prefix_hit_ratio - 0.01
        assert 0 < ours.bonus[ONCE] < 4 * 30  # type: ignore[attr-defined]
        lru, ours = make_policy("lru"), make_policy("reuse-gap")


def test_slow_conversations_among_one_shot_prompts_beat_lru():
    """Each request is a one-shot prompt (20 fresh chunks) with probability 0.8; otherwise the
    next turn of one of 40 conversations, which therefore come back only every ~200 requests,
    beyond what 1,000 chunks of LRU hold."""
    rng, fresh = random.Random(5), iter(range(1000, 10**9))
    conversations = [[0] + [next(fresh) for _ in range(8)] for _ in range(40)]
    trace = []
    for _ in range(2000):
        if rng.random() < 0.8:
            trace.append([0] + [next(fresh) for _ in range(20)])
        else:
            context = rng.choice(conversations)
            trace.append(context + [next(fresh)])
            context.append(next(fresh))
    lru = simulate(trace, make_policy("lru"), 1000).prefix_hit_ratio
    ours = simulate(trace, make_policy("reuse-gap"), 1000).prefix_hit_ratio
    assert ours > lru + 0.04  # 0.140 against 0.083 when written
