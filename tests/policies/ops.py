"""Random operation sequences shared by the policy tests: touches (with a group and a depth),
removals of held or unknown keys, evictions the way the store takes them (the first candidate),
and looks at the order."""
from __future__ import annotations

from hypothesis import strategies as st

KEYS = list(range(10))
GROUPS = ["a", "b", ""]

OP = st.one_of(
    st.tuples(st.just("touch"), st.sampled_from(KEYS), st.sampled_from(GROUPS), st.integers(0, 5)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS + [99]), st.just(""), st.just(0)),
    st.tuples(st.just("evict"), st.just(0), st.just(""), st.just(0)),
    st.tuples(st.just("look"), st.just(0), st.sampled_from(GROUPS + [None]), st.just(0)),
)
#: Prompt-like runs of touches: depth 0, 1, 2, ... then a new prompt, as the store touches.
PROMPT = st.lists(st.sampled_from(KEYS), min_size=1, max_size=6).map(
    lambda keys: [("touch", k, "", d) for d, k in enumerate(keys)])
OPS = st.lists(st.one_of(OP, OP, PROMPT.map(tuple)), max_size=40).map(
    lambda items: [op for item in items for op in (item if isinstance(item[0], tuple) else [item])])
