"""The baseline the connector tests stand on: a real vLLM engine on the float32 test model is
deterministic across engine processes, its outputs depend on the context, and a prefix-cache
hit reproduces what computing the prefix gives.

Two engine processes run the same prompts, one ``generate`` call per prompt in order: one in
vLLM's production shape (scheduler and worker in separate processes, started for this test,
~40 s on the 2-core dev machine) and one with both in the runner process (the shape of the
session's pooled engines, which the connector tests compare against): the outputs are the same.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from .testmodel import read_spec
from .engines import EnginePool

MAX_TOKENS = 8
LOGPROB_TOL = 1e-5


@pytest.fixture(scope="module")
def prompts(test_model_dir: Path) -> dict[str, list[int]]:
    vocab = read_spec(test_model_dir)["vocab_size"]
    rng = random.Random(1234)

    def rand(n: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(n)]  # ids 0..3 are special tokens

    suffix = rand(40)
    long = rand(300)
    return {
        "long": long,  # 2 full blocks of 128 + a partial one
        "ctx_a": rand(100) + suffix,  # same last 40 tokens, different context
        "ctx_b": rand(100) + suffix,
        "long_again": list(long),  # hits the engine's own prefix cache (256 tokens)
    }


@pytest.fixture(scope="module")
def two_runs(test_model_dir: Path, engines: EnginePool, prompts: dict[str, list[int]]) -> tuple[dict, dict]:
    names = list(prompts)
    runs = []
    for single_process in (False, True):
        results = engines.run(test_model_dir, list(prompts.values()), max_tokens=MAX_TOKENS, sequential=True,
                              single_process=single_process)
        runs.append(dict(zip(names, results)))
    return runs[0], runs[1]


def assert_same_output(a: dict, b: dict, what: str) -> None:
    assert a["token_ids"] == b["token_ids"], f"{what}: tokens differ"
    assert [t for t, _ in a["first_logprobs"]] == [t for t, _ in b["first_logprobs"]], f"{what}: top-k ids differ"
    for (_, la), (_, lb) in zip(a["first_logprobs"], b["first_logprobs"]):
        assert la == pytest.approx(lb, abs=LOGPROB_TOL), f"{what}: logprobs differ"


def test_outputs_are_well_formed(two_runs: tuple[dict, dict], prompts: dict[str, list[int]]) -> None:
    run, _ = two_runs
    for name, r in run.items():
        assert r["prompt_len"] == len(prompts[name])
        assert len(r["token_ids"]) == MAX_TOKENS
        assert r["finish_reason"] == "length"
        assert len(r["first_logprobs"]) == 5
        assert r["first_logprobs"][0][0] == r["token_ids"][0], "greedy: top-1 is the sampled token"
        logprobs = [lp for _, lp in r["first_logprobs"]]
        assert logprobs == sorted(logprobs, reverse=True)


def test_same_prompts_same_outputs_across_engines(two_runs: tuple[dict, dict]) -> None:
    first, second = two_runs
    for name in first:
        assert_same_output(first[name], second[name], name)
        assert first[name]["num_cached_tokens"] == second[name]["num_cached_tokens"]


def test_outputs_depend_on_context(two_runs: tuple[dict, dict]) -> None:
    run, _ = two_runs
    a, b = run["ctx_a"], run["ctx_b"]
    assert a["token_ids"] != b["token_ids"]
    assert a["first_logprobs"] != b["first_logprobs"]
    assert run["long"]["token_ids"] != a["token_ids"]


def test_prefix_cache_hit_reproduces_computed_output(two_runs: tuple[dict, dict]) -> None:
    run, _ = two_runs
    assert run["long"]["num_cached_tokens"] == 0
    # vLLM hits whole 128-token blocks and always recomputes the last prompt token.
    assert run["long_again"]["num_cached_tokens"] == 256
    assert_same_output(run["long"], run["long_again"], "prefix-cache hit")
