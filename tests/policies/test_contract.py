"""What every registered policy promises the store, whatever it is: each held key exactly once
in `candidates()`, a group's order is the global order restricted to the group, a touch with
another group moves the key, `remove` of an unknown key changes nothing, keys may be ints or
bytes; and each policy runs a trace through the simulator."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings

from tests.policies.ops import GROUPS, OPS
from tierd.errors import InvalidArgumentError
from tierd.mrc.simulate import simulate
from tierd.policies import POLICIES, make_policy

NAMES = sorted(POLICIES)


def check_orders(policy, group_of):
    everything = list(policy.candidates())
    assert len(everything) == len(set(everything)) == len(policy) == len(group_of)
    assert set(everything) == set(group_of)
    assert all(k in policy for k in group_of)
    for group in GROUPS + ["never-used"]:
        assert list(policy.candidates(group)) == [k for k in everything if group_of[k] == group]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("as_key", [int, lambda i: bytes([i]) * 16], ids=["int", "bytes"])
@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_every_held_key_once_and_groups_are_restrictions(name, as_key, ops):
    policy, group_of = make_policy(name), {}
    for op, key, group, depth in ops:
        key = as_key(key)
        if op == "touch":
            policy.touch(key, group, depth)
            group_of[key] = group
        elif op == "remove":
            policy.remove(key)
            group_of.pop(key, None)
        elif op == "evict" and len(policy):
            victim = next(policy.candidates())
            policy.remove(victim)
            del group_of[victim]
        check_orders(policy, group_of)
    assert as_key(99) not in policy


@pytest.mark.parametrize("name", NAMES)
def test_removing_an_unknown_key_changes_nothing(name):
    policy = make_policy(name)
    for depth, key in enumerate([b"a", b"b", b"c"]):
        policy.touch(key, "g", depth)
    policy.remove(b"b")
    before = list(policy.candidates())
    policy.remove(b"never-held")
    policy.remove(b"b")
    assert list(policy.candidates()) == before and len(policy) == 2 and b"b" not in policy


@pytest.mark.parametrize("name", NAMES)
def test_a_touch_with_another_group_moves_the_key(name):
    policy = make_policy(name)
    policy.touch(b"x", "a")
    policy.touch(b"y", "a")
    policy.touch(b"x", "b")
    assert list(policy.candidates("a")) == [b"y"] and list(policy.candidates("b")) == [b"x"]
    policy.remove(b"x")
    assert list(policy.candidates("b")) == [] and list(policy.candidates()) == [b"y"]


@pytest.mark.parametrize("name", NAMES)
def test_each_policy_replays_a_trace_in_the_simulator(name):
    # Three prompts that fit together: after the first pass every chunk is a prefix hit.
    prompts = [[1, 2, 3, 4], [1, 2, 5], [6, 7]]
    result = simulate(prompts * 3, make_policy(name), capacity=20)
    assert (result.references, result.prefix_hits, result.block_hits) == (27, 20, 20)
    # Conversations whose prompts grow and are re-read, more of them than the cache holds:
    # the policy never holds more than asked, and some (not all) re-reads hit.
    rng, contexts, trace = random.Random(7), [[0] for _ in range(12)], []
    for turn in range(300):
        context = rng.choice(contexts)
        context.extend(10_000 + 100 * turn + i for i in range(rng.randrange(1, 4)))
        trace.append(list(context))
    policy = make_policy(name)
    result = simulate(trace, policy, capacity=50)
    assert len(policy) <= 50
    assert 0 < result.prefix_hits <= result.block_hits < result.references


def test_make_policy_refuses_an_unknown_name_naming_the_known_ones():
    with pytest.raises(InvalidArgumentError) as err:
        make_policy("belady")
    assert "belady" in str(err.value) and all(name in str(err.value) for name in NAMES)


def test_every_registered_policy_is_named_by_its_key():
    assert all(make_policy(name).name == name for name in NAMES)
    assert {"lru", "arc", "s3fifo", "prefix", "reuse-gap"} <= set(NAMES)
