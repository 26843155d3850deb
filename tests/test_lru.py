"""The LRU policy's per-group orders (a namespace's own oldest chunk, for quotas) must always be
the tier's order restricted to that group, whatever sequence of touches, regroupings and
removals came before."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.policies.lru import LRUPolicy

KEYS = [bytes([i]) for i in range(8)]
GROUPS = ["a", "b", ""]
OPS = st.lists(st.tuples(st.sampled_from(["touch", "remove"]), st.sampled_from(KEYS), st.sampled_from(GROUPS)),
               max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_group_orders_are_the_tier_order_restricted_to_the_group(ops):
    lru, group_of = LRUPolicy(), {}
    for op, key, group in ops:
        if op == "touch":
            lru.touch(key, group)
            group_of[key] = group
        else:
            lru.remove(key)
            group_of.pop(key, None)
    everything = list(lru.candidates())
    assert sorted(everything) == sorted(group_of) and len(lru) == len(group_of)
    for group in GROUPS + ["never-used"]:
        assert list(lru.candidates(group)) == [k for k in everything if group_of[k] == group]


def test_a_regrouped_key_leaves_its_old_group():
    lru = LRUPolicy()
    lru.touch(b"x", "a")
    lru.touch(b"y", "a")
    lru.touch(b"x", "b")
    assert list(lru.candidates("a")) == [b"y"] and list(lru.candidates("b")) == [b"x"]
    assert list(lru.candidates()) == [b"y", b"x"]
    lru.remove(b"y")
    assert list(lru.candidates("a")) == [] and b"y" not in lru
