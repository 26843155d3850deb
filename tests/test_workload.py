"""bench.workload without an engine: the request generators (deterministic, with the intended
sharing), the capacity arithmetic of the chosen sizes, the report's ratio math, the PNG, and
the event pipe the engine process reports through."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

from bench.workload import (
    BLOCK_SIZE,
    CHUNK_TOKENS,
    FULL,
    FULL_SIZES,
    MAX_TOKENS,
    QUICK,
    QUICK_SIZES,
    WORKLOADS,
    engine_shape,
    parse_args,
    read_events,
)
from bench.workload_report import (
    CONFIGS,
    RequestResult,
    RunResult,
    figures,
    missing_lookups,
    percentile,
    plot_ttft,
    table,
)
from bench.workloads import (
    FIRST_ID,
    MOONCAKE_CONVERSATION,
    CapacityPlan,
    ChatSpec,
    DocQASpec,
    MooncakeSpec,
    Request,
    chat_requests,
    docqa_requests,
    ideal_hit_ratio,
    mooncake_requests,
    sample_mooncake,
    working_set_tokens,
)

VOCAB = 2048  # the test model's
needs_trace = pytest.mark.skipif(not MOONCAKE_CONVERSATION.exists(), reason="Mooncake traces not checked out")


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- generators


def test_generators_are_deterministic_and_seeded() -> None:
    small = ChatSpec(users=3, visits=2, turns_per_visit=2, active=2, system_tokens=64, first_message_tokens=128)
    assert chat_requests(small, VOCAB) == chat_requests(small, VOCAB)
    assert chat_requests(small, VOCAB) != chat_requests(ChatSpec(**{**_fields(small), "seed": 1}), VOCAB)
    docs = DocQASpec(documents=3, document_tokens=200, questions=3)
    assert docqa_requests(docs, VOCAB) == docqa_requests(docs, VOCAB)
    for reqs in (chat_requests(small, VOCAB), docqa_requests(docs, VOCAB)):
        assert all(FIRST_ID <= t < VOCAB for r in reqs for t in r.tokens)


def _fields(spec: object) -> dict:
    return {f: getattr(spec, f) for f in spec.__slots__}  # type: ignore[attr-defined]


def test_chat_turns_extend_their_own_history() -> None:
    spec = ChatSpec(users=5, visits=2, turns_per_visit=3, active=3, system_tokens=96, first_message_tokens=300,
                    message_tokens=(10, 40), answer_tokens=(20, 60))
    reqs = chat_requests(spec, VOCAB)
    assert len(reqs) == spec.users * spec.turns
    by_user: dict[str, list[Request]] = {}
    for r in reqs:
        by_user.setdefault(r.tag.split("/")[0], []).append(r)
    assert len(by_user) == spec.users
    system = reqs[0].tokens[: spec.system_tokens]
    for user, turns in by_user.items():
        assert [t.tag for t in turns] == [f"{user}/turn{k}" for k in range(spec.turns)]  # in order
        assert len(turns[0].tokens) == spec.system_tokens + spec.first_message_tokens
        for prev, nxt in zip(turns, turns[1:]):
            # turn k+1 = turn k's prompt + its answer + the next message
            assert nxt.tokens[: len(prev.tokens)] == prev.tokens
            grown = len(nxt.tokens) - len(prev.tokens)
            assert spec.answer_tokens[0] + spec.message_tokens[0] <= grown <= spec.answer_tokens[1] + spec.message_tokens[1]
        assert turns[0].tokens[: spec.system_tokens] == system  # one system prompt for all
    # different users share the system prompt and nothing more (no full chunk beyond it)
    firsts = [turns[0].tokens for turns in by_user.values()]
    for a, b in combinations(firsts, 2):
        assert spec.system_tokens <= common_prefix(a, b) < spec.system_tokens + 8
    # a user takes two turns in a row only when no other session is left (the end of the run)
    users = [r.tag.split("/")[0] for r in reqs]
    for i, (a, b) in enumerate(zip(users, users[1:])):
        assert a != b or set(users[i:]) == {a}, (i, users)
    assert max(len(r.tokens) for r in reqs) <= spec.max_prompt_tokens()


def test_chat_sessions_interleave_and_second_visits_come_last() -> None:
    spec = ChatSpec(users=6, visits=2, turns_per_visit=4, active=4)
    tags = [r.tag for r in chat_requests(spec, VOCAB)]
    first_turn = {u: tags.index(f"user{u}/turn0") for u in range(spec.users)}
    second_visit = {u: tags.index(f"user{u}/turn{spec.turns_per_visit}") for u in range(spec.users)}
    assert min(second_visit.values()) > max(first_turn.values())  # every user had a first visit before
    # within a visit a user waits for the other open sessions, but not for long: one of the two
    # sessions that waited longest speaks next
    users = [int(t.split("/")[0].removeprefix("user")) for t in tags]
    for u in range(spec.users):
        at = [i for i, x in enumerate(users) if x == u]
        gaps = [b - a for a, b in zip(at, at[1:])]
        within = [g for k, g in enumerate(gaps, 1) if k % spec.turns_per_visit]  # not across visits
        assert max(within) <= 2 * spec.active, (u, gaps)


def test_docqa_questions_share_their_document() -> None:
    spec = DocQASpec(documents=4, document_tokens=700, questions=5, question_tokens=(10, 30))
    reqs = docqa_requests(spec, VOCAB)
    assert len(reqs) == spec.documents * spec.questions
    docs = [r.tag.split("/")[0] for r in reqs]
    for i, (a, b) in enumerate(zip(docs, docs[1:])):  # interleaved until one document is left
        assert a != b or set(docs[i:]) == {a}, (i, docs)
    assert sorted(docs) == sorted(f"doc{d}" for d in range(spec.documents) for _ in range(spec.questions))
    for a, b in combinations(reqs, 2):
        shared = common_prefix(a.tokens, b.tokens)
        if a.tag.split("/")[0] == b.tag.split("/")[0]:
            assert spec.document_tokens <= shared < spec.document_tokens + spec.question_tokens[0]
        else:
            assert shared < 4  # different documents: nothing beyond a chance token or two


@needs_trace
def test_mooncake_shared_ids_are_exactly_shared_tokens() -> None:
    spec = MooncakeSpec(requests=60, length_scale=0.25, max_blocks=6, tail_tokens=16, block_tokens=512)
    sampled = sample_mooncake(spec)
    reqs = mooncake_requests(spec, VOCAB)
    assert reqs == mooncake_requests(spec, VOCAB)
    assert len(reqs) == len(sampled) == spec.requests
    for (_, ids), r in zip(sampled, reqs):
        assert len(r.tokens) == len(ids) * 512 + spec.tail_tokens
    pairs = 0
    for (ia, a), (ib, b) in combinations(list(zip([ids for _, ids in sampled], reqs)), 2):
        k = common_prefix(tuple(ia), tuple(ib))
        assert common_prefix(a.tokens, b.tokens) == k * 512, (a.tag, b.tag, k)
        pairs += k >= 2
    assert pairs > 0  # the sample holds conversations that really reuse blocks beyond id 0


@needs_trace
def test_mooncake_sample_is_whole_conversations_in_trace_order() -> None:
    from tierd.mrc.traces import read_mooncake

    spec = MooncakeSpec(requests=80, length_scale=0.5, max_blocks=4)
    sampled = sample_mooncake(spec)
    lines = [line for line, _ in sampled]
    assert lines == sorted(lines) and len(set(lines)) == len(lines) == spec.requests
    full = {int(r.request_id or 0): r.keys for r in read_mooncake(spec.trace)}
    convs: dict[int, list[int]] = {}
    for line, ids in sampled:
        assert ids == full[line][: spec.kept(len(full[line]))]
        assert len(ids) <= spec.max_blocks
        if len(full[line]) > 1:
            convs.setdefault(full[line][1], []).append(line)
    # every sampled conversation is whole up to the replay's last trace line (where it stops)
    for conv, got in convs.items():
        expected = [l for l, ids in full.items() if len(ids) > 1 and ids[1] == conv]
        assert got == [l for l in expected if l <= lines[-1]], conv
    assert sum(len(v) > 1 for v in convs.values()) >= 5  # conversations with reuse are in it


# --------------------------------------------------------------------------- capacity arithmetic


def test_working_set_and_ideal_hits_on_a_small_example() -> None:
    a = Request("t", "a", tuple(range(10, 10 + 300)))  # 2 full chunks of 128, 44 tokens left
    b = Request("t", "b", a.tokens[:256] + (7,) * 100)  # shares both chunks
    c = Request("t", "c", (5,) * 130)  # one chunk of its own
    assert working_set_tokens([a, b, c], 128) == (2 + 0 + 1) * 128
    # b reuses 256 tokens; a and c nothing
    assert ideal_hit_ratio([a, b, c], 128, 128) == pytest.approx(256 / (300 + 356 + 130))
    # a prompt equal to a stored one still computes its last block
    assert ideal_hit_ratio([a, a], 128, 128) == pytest.approx(256 / 600)
    plan = CapacityPlan(kv_bytes_per_token=2048, chunk_tokens=128, engine_blocks=10, block_size=128,
                        dram_tokens=1000, nvme_tokens=3000)
    d = plan.describe("t", 4000)
    assert plan.engine_tokens == 1280 and plan.dram_bytes == 2048 * 1000
    assert d["working_set_over_engine"] == 3.12 and d["working_set_over_dram"] == 4.0
    assert d["working_set_over_dram_nvme"] == 1.0


@pytest.mark.parametrize("quick", [False, True])
def test_chosen_sizes_make_capacity_matter(quick: bool) -> None:
    """The working set of every workload exceeds the engine's KV space several times (full run)
    and tierd's DRAM, and fits in DRAM + NVMe, so (a), (b) and (c) differ for capacity."""
    specs, sizes = (QUICK, QUICK_SIZES) if quick else (FULL, FULL_SIZES)
    names = [n for n in WORKLOADS if n != "mooncake" or MOONCAKE_CONVERSATION.exists()]
    workloads = {n: specs.build(n, VOCAB) for n in names}
    longest = max(len(r.tokens) for reqs in workloads.values() for r in reqs)
    max_len, blocks = engine_shape(longest, sizes)
    assert max_len >= longest + MAX_TOKENS and max_len % BLOCK_SIZE == 0
    assert (blocks - 1) * BLOCK_SIZE >= max_len  # vLLM keeps one null block
    assert longest <= specs.max_prompt_tokens(names)
    plan = CapacityPlan(2048, CHUNK_TOKENS, blocks, BLOCK_SIZE, sizes.dram_tokens, sizes.nvme_tokens)
    assert plan.dram_tokens > plan.engine_tokens
    for name, reqs in workloads.items():
        d = plan.describe(name, working_set_tokens(reqs, CHUNK_TOKENS))
        assert d["working_set_over_engine"] >= (4 if not quick else 2), d
        assert d["working_set_over_dram"] > 1.15, d
        assert d["working_set_over_dram_nvme"] < 0.5, d
        assert ideal_hit_ratio(reqs, CHUNK_TOKENS, BLOCK_SIZE) > 0.45, name  # there is reuse to win


# --------------------------------------------------------------------------- report


def _stat(dram: tuple[int, int], nvme: tuple[int, int] | None = None) -> dict:
    tiers = [{"name": "dram", "hits": dram[0], "misses": dram[1]}]
    if nvme is not None:
        tiers.append({"name": "nvme", "hits": nvme[0], "misses": nvme[1]})
    return {"tiers": tiers, "chunks": 0}


def _run(config: str, workload: str, ttfts: list[float], wall: float, cached: int, local: int,
         before: dict | None = None, after: dict | None = None) -> RunResult:
    reqs = [RequestResult(t, t + 0.1, 1000, cached, local, cached - local, MAX_TOKENS) for t in ttfts]
    return RunResult(config, workload, wall, reqs, before, after)


def synthetic_results() -> list[RunResult]:
    return [
        _run("a", "chat", [2.0, 3.0, 4.0, 5.0], wall=16.0, cached=100, local=100),
        _run("b", "chat", [0.5, 0.5, 1.0, 5.0], wall=4.0, cached=800, local=100, before=_stat((10, 5)),
             after=_stat((70, 45))),
        _run("c", "chat", [0.4, 0.5, 0.5, 0.6], wall=3.2, cached=900, local=100, before=_stat((0, 0), (0, 0)),
             after=_stat((60, 40), (30, 10))),
        _run("a", "docqa", [1.0, 1.0], wall=4.0, cached=0, local=0),
        _run("b", "docqa", [0.5, 0.5], wall=2.0, cached=500, local=0, before=_stat((0, 0)), after=_stat((5, 5))),
    ]


def test_report_math() -> None:
    res = synthetic_results()
    a, b, c = res[0], res[1], res[2]
    assert a.requests_per_s == 4 / 16 and b.requests_per_s == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert b.ttft_percentile(99) == pytest.approx(1.0 + 0.97 * 4.0)  # numpy's linear interpolation
    hits = b.hit_ratios()
    assert hits["total"] == 0.8 and hits["engine"] == 0.1 and hits["tierd"] == pytest.approx(0.7)
    assert hits["dram"] == pytest.approx(60 / 100)  # (70-10) hits of (70+45)-(10+5) references
    hc = c.hit_ratios()
    assert hc["dram"] == pytest.approx(0.6) and hc["nvme"] == pytest.approx(0.3)
    assert "dram" not in a.hit_ratios()

    figs = {f.name: f for f in figures(res, ideal_hit={"chat": 0.85, "docqa": 0.8})}
    rps = figs["workload_chat_requests_per_s_tierd_dram"]
    assert rps.value == 1.0 and rps.baseline_value == 0.25 and rps.ratio == 4.0 and rps.unit == "requests/s"
    p50 = figs["workload_chat_ttft_p50_tierd_dram_nvme"]
    assert p50.value == 0.5 and p50.baseline_value == 3.5 and p50.ratio == pytest.approx(7.0)  # baseline/value
    p99 = figs["workload_chat_ttft_p99_tierd_dram"]
    assert p99.ratio == pytest.approx(a.ttft_percentile(99) / b.ttft_percentile(99))
    hit = figs["workload_chat_hit_ratio_total_tierd_dram"]
    assert hit.value == 0.8 and hit.baseline_value == 0.1 and hit.ratio == pytest.approx(8.0)
    assert figs["workload_chat_hit_ratio_nvme_tierd_dram_nvme"].value == pytest.approx(0.3)
    assert "workload_chat_hit_ratio_nvme_tierd_dram" not in figs  # (b) has no NVMe tier
    assert "workload_chat_requests_per_s_vllm_prefix_cache" not in figs  # (a) is the baseline
    assert "workload_chat_hit_ratio_total_vllm_prefix_cache" in figs
    # (a) hit nothing in docqa: no ratio, not a division by zero
    zero = figs["workload_docqa_hit_ratio_total_tierd_dram"]
    assert zero.baseline_value == 0 and zero.ratio is None
    line = json.loads(zero.line().removeprefix("FIGURE "))
    assert line["ratio"] is None and line["ideal"] == 0.8 and line["name"] == zero.name
    assert all(f.line().startswith("FIGURE {") for f in figs.values())
    # nothing for a workload whose baseline did not run
    assert not [f for f in figures(res[1:3]) if "requests_per_s" in f.name]


def test_missing_lookups_flag_a_lost_daemon() -> None:
    res = synthetic_results()
    assert missing_lookups(res[0], 128) == 0  # no daemon
    b = res[1]
    b.stat_before["lookups"], b.stat_after["lookups"] = 10, 14
    assert missing_lookups(b, 128) == 0  # one lookup per request
    b.stat_after["lookups"] = 11
    assert missing_lookups(b, 128) == 3
    assert missing_lookups(b, 2000) == 0  # prompts shorter than a chunk need no lookup


def test_table_and_results_round_trip() -> None:
    res = synthetic_results()
    text = table(res)
    assert "(4.00x)" in text and all(c.label in text for c in CONFIGS[:3])
    again = [RunResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in res]
    assert [x.to_dict() for x in again] == [r.to_dict() for r in res]


def test_png_is_written(tmp_path: Path) -> None:
    path = plot_ttft(synthetic_results(), tmp_path / "plots" / "ttft.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# --------------------------------------------------------------------------- plumbing


def test_events_are_read_until_done_or_exit() -> None:
    code = ("import os, sys, json\nfd = int(sys.argv[1])\n"
            "for e in ({'event': 'ready', 'engine_start_s': 1.0}, {'event': 'request', 'index': 0}):\n"
            "    os.write(fd, (json.dumps(e) + '\\n').encode())\n"
            "if sys.argv[2] == 'done':\n    os.write(fd, b'{\"event\": \"done\"}\\n')\n")
    for ending in ("done", "crash"):
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-c", code, str(w), ending], pass_fds=(w,))
        os.close(w)
        try:
            events = [e["event"] for e in read_events(r, proc, timeout_s=60)]
        finally:
            os.close(r)
            proc.wait()
        assert events == ["ready", "request"] + (["done"] if ending == "done" else [])


def test_args() -> None:
    args = parse_args(["--quick", "--workload", "chat", "--configs", "ab"])
    assert args.quick and args.workload == "chat" and args.configs == "ab"
    with pytest.raises(SystemExit):
        parse_args(["--configs", "axe"])
