"""The generated agentic trace (tierd.mrc.agentic): deterministic per seed, chained ids, every
turn re-reading its session's whole context, and readable as a Mooncake trace."""
from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.mrc.agentic import AgenticSpec, agentic_requests, main, write_mooncake
from tierd.mrc.traces import read_trace

SMALL = AgenticSpec(sessions=60, concurrency=8, mean_turns=6.0)

specs = st.builds(AgenticSpec, sessions=st.integers(1, 40), concurrency=st.integers(1, 10),
                  system_blocks=st.integers(0, 4), agent_types=st.integers(1, 3), tool_blocks=st.integers(0, 3),
                  max_append=st.integers(1, 4), mean_turns=st.floats(1.0, 8.0), max_turns=st.integers(1, 30),
                  max_context_blocks=st.integers(1, 60))


def test_a_seed_gives_the_same_trace_and_another_seed_another():
    a = list(agentic_requests(SMALL, seed=3))
    assert a == list(agentic_requests(SMALL, seed=3))
    assert a != list(agentic_requests(SMALL, seed=4))


@settings(max_examples=60, deadline=None)
@given(specs, st.integers(0, 1000))
def test_an_id_names_its_whole_prefix(spec, seed):
    """Chained ids: wherever an id appears, the ids before it are the same."""
    prefix_of: dict[int, tuple[int, ...]] = {}
    for r in agentic_requests(spec, seed):
        for i, block in enumerate(r.hash_ids):
            assert prefix_of.setdefault(block, r.hash_ids[:i]) == r.hash_ids[:i]


@settings(max_examples=60, deadline=None)
@given(specs, st.integers(0, 1000))
def test_each_turn_rereads_the_whole_context_and_appends_a_few_blocks(spec, seed):
    last: dict[int, tuple[int, ...]] = {}
    turns: dict[int, int] = defaultdict(int)
    for r in agentic_requests(spec, seed):
        assert r.turn == turns[r.session]
        turns[r.session] += 1
        assert r.hash_ids[:spec.system_blocks] == tuple(range(spec.system_blocks))
        assert len(r.hash_ids) <= spec.max_context_blocks or r.turn == 0
        before = last.get(r.session)
        if before is not None:
            assert r.hash_ids[:len(before)] == before
            assert 1 <= len(r.hash_ids) - len(before) <= spec.max_append
        last[r.session] = r.hash_ids
    assert len(turns) == spec.sessions
    assert max(turns.values()) <= spec.max_turns


def test_sessions_interleave_share_the_system_prompt_and_vary_in_length():
    requests = list(agentic_requests(SMALL, seed=0))
    sessions = [r.session for r in requests]
    # interleaved: sessions change turn by turn, and one is resumed after others spoke
    switches = sum(a != b for a, b in zip(sessions, sessions[1:]))
    assert switches > len(requests) // 2
    first, last = {}, {}
    for i, s in enumerate(sessions):
        first.setdefault(s, i)
        last[s] = i
    assert max(last[s] - first[s] for s in first) > SMALL.concurrency
    lengths = defaultdict(int)
    for s in sessions:
        lengths[s] += 1
    assert min(lengths.values()) < SMALL.mean_turns < max(lengths.values())
    # a session-unique block is never read by another session; a tool set is shared by several
    owner: dict[int, set[int]] = defaultdict(set)
    for r in requests:
        for block in r.hash_ids:
            owner[block].add(r.session)
    shared = SMALL.system_blocks + SMALL.agent_types * SMALL.tool_blocks
    assert all(len(owner[b]) == 60 for b in range(SMALL.system_blocks))
    assert all(len(v) == 1 for b, v in owner.items() if b >= shared)
    assert any(len(owner[b]) > 1 for b in range(SMALL.system_blocks, shared))
    timestamps = [r.timestamp_ms for r in requests]
    assert timestamps == sorted(timestamps)


def test_the_jsonl_reads_back_as_a_mooncake_trace(tmp_path):
    requests = list(agentic_requests(SMALL, seed=1))
    path = tmp_path / "agentic.jsonl"
    assert write_mooncake(requests, path) == len(requests)
    back = list(read_trace(path, "mooncake"))
    assert [r.keys for r in back] == [list(r.hash_ids) for r in requests]
    assert [r.timestamp for r in back] == [r.timestamp_ms / 1000 for r in requests]


def test_the_module_writes_a_trace_file(tmp_path):
    path = tmp_path / "a.jsonl"
    assert main([str(path), "--sessions", "5", "--concurrency", "2", "--seed", "7"]) == 0
    spec = AgenticSpec(sessions=5, concurrency=2)
    assert [r.keys for r in read_trace(path, "mooncake")] == [list(r.hash_ids) for r in agentic_requests(spec, 7)]


@pytest.mark.parametrize("field, value", [("sessions", 0), ("concurrency", 0), ("max_append", 0),
                                          ("mean_turns", 0.5), ("max_task_blocks", 0), ("system_blocks", -1)])
def test_bad_specs_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidArgumentError, match=field):
        list(agentic_requests(AgenticSpec(**{field: value})))
