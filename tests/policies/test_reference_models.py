"""Each policy against a slow model of itself written from its definition with plain lists and
sorting: after any sequence of touches (prompt-like or not), removals, evictions and looks, the
policy's order (global and per group) is the model's."""
from __future__ import annotations

from hypothesis import given, settings

from tests.policies.ops import GROUPS, OPS
from tierd.policies.arc import ARCPolicy
from tierd.policies.prefix import PrefixLRUPolicy
from tierd.policies.reuse_gap import GHOSTS, NEW, ONCE, TWICE, TWICE_FACTOR, ReuseGapPolicy, ReuseGaps
from tierd.policies.s3fifo import MAX_FREQ, MOVE_TO_MAIN, SMALL_SHARE, S3FIFOPolicy


class RefARC:
    """ARC as in the paper's figure, minus the incoming-key tie rule, c = most keys held."""

    def __init__(self):
        self.t1, self.t2, self.b1, self.b2, self.p, self.c, self.group = [], [], [], [], 0.0, 0, {}

    def touch(self, key, group, depth):
        if key in self.t1 or key in self.t2:
            (self.t1 if key in self.t1 else self.t2).remove(key)
        elif key in self.b1:
            delta = max(len(self.b2) / len(self.b1), 1)
            self.b1.remove(key)
            self.c = max(self.c, len(self.t1) + len(self.t2) + 1)
            self.p = min(self.c, self.p + delta)
        elif key in self.b2:
            delta = max(len(self.b1) / len(self.b2), 1)
            self.b2.remove(key)
            self.c = max(self.c, len(self.t1) + len(self.t2) + 1)
            self.p = max(0, self.p - delta)
        else:
            self.t1.append(key)
            self.c = max(self.c, len(self.t1) + len(self.t2))
            self.group[key] = group
            return self.trim()
        self.t2.append(key)
        self.group[key] = group
        self.trim()

    def remove(self, key):
        for live, ghost in ((self.t1, self.b1), (self.t2, self.b2)):
            if key in live:
                live.remove(key)
                ghost.append(key)
                del self.group[key]
        self.trim()

    def trim(self):
        while self.b1 and len(self.t1) + len(self.b1) > self.c:
            self.b1.pop(0)
        while self.b2 and len(self.t1) + len(self.t2) + len(self.b1) + len(self.b2) > 2 * self.c:
            self.b2.pop(0)

    def order(self):
        if len(self.t1) > self.p or not self.t2:
            return self.t1 + self.t2
        return self.t2 + self.t1


class RefS3FIFO:
    """S3-FIFO from the paper's pseudo-code; lists oldest first; reinsertion when asked for order."""

    def __init__(self):
        self.small, self.main, self.ghost, self.freq, self.group, self.cap = [], [], [], {}, {}, 0

    def touch(self, key, group, depth):
        if key in self.freq:
            self.freq[key] = min(self.freq[key] + 1, MAX_FREQ)
            if self.group[key] != group:  # a new group re-queues the key at its FIFO's tail
                queue = self.small if key in self.small else self.main
                queue.remove(key)
                queue.append(key)
        elif key in self.ghost:
            self.ghost.remove(key)
            self.main.append(key)
            self.freq[key] = 0
        else:
            self.small.append(key)
            self.freq[key] = 0
        self.group[key] = group
        self.cap = max(self.cap, len(self.freq))
        self.trim()

    def remove(self, key):
        if key not in self.freq:
            return
        del self.freq[key], self.group[key]
        if key in self.small:
            self.small.remove(key)
            self.ghost.append(key)
            self.trim()
        else:
            self.main.remove(key)

    def trim(self):
        while len(self.ghost) > (1 - SMALL_SHARE) * self.cap:
            self.ghost.pop(0)

    def order(self):
        if self.small and (len(self.small) >= SMALL_SHARE * self.cap or not self.main):
            while self.small and self.freq[self.small[0]] >= MOVE_TO_MAIN:
                key = self.small.pop(0)
                self.main.append(key)
                self.freq[key] = 0
            if self.small:
                return self.small + self.main
        while self.main and self.freq[self.main[0]] > 0:
            self.freq[self.main[0]] -= 1
            self.main.append(self.main.pop(0))
        return self.main + self.small


class RefPrefix:
    """Order by (request that last used the key, deeper first); a touch not deeper than the
    previous one starts a request."""

    def __init__(self):
        self.now, self.last_depth, self.at, self.group = 0, None, {}, {}

    def tick(self, depth):
        if self.last_depth is not None and depth <= self.last_depth:
            self.now += 1
        self.last_depth = depth

    def touch(self, key, group, depth):
        self.tick(depth)
        self.at[key] = (self.now, depth)
        self.group[key] = group

    def remove(self, key):
        self.at.pop(key, None)
        self.group.pop(key, None)

    def order(self):
        return sorted(self.at, key=lambda k: (self.at[k][0], -self.at[k][1]))


class RefReuseGap(RefPrefix):
    """Shelves by reuse count (a ghost's return is a reuse); order by (request + bonus of the
    shelf, shelf, deeper first); the bonus is the gap estimate over reuses of reused keys."""

    def __init__(self):
        super().__init__()
        self.shelf, self.ghosts, self.cap = {}, [], 0
        self.gaps, self.bonus = ReuseGaps(period=1), [0.0] * 3

    def touch(self, key, group, depth):
        self.tick(depth)
        ghost = [g for g in self.ghosts if g[0] == key]
        if key in self.shelf:
            shelf = self.reused(self.shelf[key], self.at[key][0])
        elif ghost:
            self.ghosts.remove(ghost[0])
            shelf = self.reused(ghost[0][1], ghost[0][2])
        else:
            shelf = NEW
        self.shelf[key], self.at[key], self.group[key] = shelf, (self.now, depth), group
        self.cap = max(self.cap, len(self.shelf))
        self.trim()

    def reused(self, shelf, last):
        if shelf != NEW and self.gaps.add(self.now - last):
            self.bonus = [0.0, self.gaps.quantile, TWICE_FACTOR * self.gaps.quantile]
        return ONCE if shelf == NEW else TWICE

    def remove(self, key):
        if key in self.shelf:
            self.ghosts.append((key, self.shelf.pop(key), self.at[key][0]))
            self.trim()
        super().remove(key)

    def trim(self):
        while len(self.ghosts) > GHOSTS * self.cap:
            self.ghosts.pop(0)

    def order(self):
        return sorted(self.at, key=lambda k: (self.at[k][0] + self.bonus[self.shelf[k]], self.shelf[k], -self.at[k][1]))


def replay(policy, model, ops):
    for op, key, group, depth in ops:
        if op == "touch":
            policy.touch(key, group, depth)
            model.touch(key, group, depth)
        elif op == "remove":
            policy.remove(key)
            model.remove(key)
        elif op == "evict" and len(policy):
            victim = next(policy.candidates())
            assert victim == model.order()[0]
            policy.remove(victim)
            model.remove(victim)
        elif op == "look":
            expected = model.order()
            if group is not None:
                expected = [k for k in expected if model.group[k] == group]
            assert list(policy.candidates(group)) == expected
    everything = model.order()
    assert list(policy.candidates()) == everything
    for group in GROUPS:
        assert list(policy.candidates(group)) == [k for k in everything if model.group[k] == group]


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_arc_is_its_model(ops):
    arc, model = ARCPolicy(), RefARC()
    replay(arc, model, ops)
    assert arc.ghosts() == (model.b1, model.b2) and arc.p == model.p and arc.c == model.c


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_s3fifo_is_its_model(ops):
    s3, model = S3FIFOPolicy(), RefS3FIFO()
    replay(s3, model, ops)
    assert s3.ghosts() == model.ghost and s3.capacity == model.cap


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_prefix_is_its_model(ops):
    replay(PrefixLRUPolicy(), RefPrefix(), ops)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_reuse_gap_is_its_model(ops):
    policy, model = ReuseGapPolicy(period=1), RefReuseGap()
    replay(policy, model, ops)
    assert policy.ghosts() == [g[0] for g in model.ghosts] and policy.bonus == model.bonus
    assert all(policy.shelf_of(k) == model.shelf[k] for k in model.shelf)
