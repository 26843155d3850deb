"""`tierd mrc --opt` and `--policy`: Belady's optimum and each registered policy's simulated curve
beside the exact LRU curve, in the table, the JSON and the PNG, for Mooncake and Parquet traces."""
from __future__ import annotations

import json

import pytest

from tierd.cli import main
from tierd.mrc.agentic import AgenticSpec, agentic_requests, write_mooncake
from tierd.mrc.belady import belady
from tierd.mrc.trace_recorder import TraceRecorder
from tierd.mrc.trace_report import analyze, thin_grid
from tierd.mrc.traces import read_trace
from tierd.policies import POLICIES

SPEC = AgenticSpec(sessions=40, concurrency=10, mean_turns=5.0)
GRID = "20,40,60,80,100,150,200,300"


@pytest.fixture()
def trace(tmp_path):
    path = tmp_path / "agentic.jsonl"
    write_mooncake(agentic_requests(SPEC, seed=2), path)
    return path


def run_json(capsys, *args: str) -> dict:
    assert main(["mrc", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_optimum_and_every_policy(trace, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    report = run_json(capsys, "--trace", str(trace), "--sample-rate", "1", "--grid", GRID, "--opt", "--policy", "all",
                      "--policy-points", "4", "--plot", str(plot))
    grid = [int(c) for c in GRID.split(",")]
    assert [c for c, _ in report["opt"]] == grid and [c for c, _ in report["opt_block"]] == grid
    requests = [r.keys for r in read_trace(trace, "mooncake")]
    expected = belady(requests, grid)
    assert [h for _, h in report["opt"]] == [round(r.prefix_hit_ratio, 6) for r in expected]
    assert [h for _, h in report["opt_block"]] == [round(r.block_hit_ratio, 6) for r in expected]
    assert report["policy_grid"] == [20, 60, 150, 300]
    assert list(report["policies"]) == list(POLICIES)
    lru_exact = dict((c, h) for c, h in report["prefix_exact"])
    opt_block = dict((c, h) for c, h in report["opt_block"])
    for name, curve in report["policies"].items():
        assert [c for c, _ in curve] == report["policy_grid"]
        for cap, ratio in curve:
            assert 0 <= ratio <= opt_block[cap], name  # no policy beats the optimum's block hits
    # the simulated LRU policy is the exact LRU curve; the optimum is above it and strictly
    # above where the interleaved sessions thrash LRU
    assert all(lru_exact[c] == h for c, h in report["policies"]["lru"])
    assert all(h >= lru_exact[c] for c, h in report["opt"])
    assert report["opt"][0][1] > lru_exact[20] + 0.05
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_the_optimum_and_marks_capacities_not_simulated(trace, capsys):
    assert main(["mrc", "--trace", str(trace), "--sample-rate", "1", "--grid", "50,100,150", "--opt",
                 "--policy", "lru", "--policy-points", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["capacity_blocks", "exact", "shards", "prefix_exact", "prefix_shards", "opt_block", "opt",
                                "lru"]
    assert lines[2].split()[-1] == "-"  # 100 blocks: not one of the 2 simulated capacities
    assert lines[1].split()[-1] == lines[1].split()[3]  # simulated LRU == exact prefix LRU
    assert "LRU reaches" in out and "of the optimum's prefix hit ratio" in out


def test_parquet_traces_with_byte_keys(tmp_path, capsys):
    path = tmp_path / "trace.parquet"
    requests = [list(r.hash_ids) for r in agentic_requests(SPEC, seed=5)]
    with TraceRecorder(path) as rec:
        for ids in requests:
            rec.record("lookup", "ns", [i.to_bytes(16, "little") for i in ids], 4096)
    report = run_json(capsys, "--trace", str(path), "--format", "parquet", "--sample-rate", "1", "--grid", "30,90",
                      "--opt", "--policy", "lru")
    expected = belady(requests, [30, 90])
    assert [h for _, h in report["opt"]] == [round(r.prefix_hit_ratio, 6) for r in expected]
    assert report["policies"]["lru"] == report["prefix_exact"]
    assert report["block_bytes"] == 4096


def test_thin_grid_keeps_the_ends_and_at_most_the_points():
    assert thin_grid([1, 2, 3], 10) == [1, 2, 3]
    assert thin_grid(list(range(1, 41)), 10)[0] == 1 and thin_grid(list(range(1, 41)), 10)[-1] == 40
    assert len(thin_grid(list(range(1, 41)), 10)) == 10
    assert thin_grid(list(range(1, 41)), 1) == [1]


def test_analyze_refuses_an_unknown_policy_before_reading_the_trace():
    def trace():
        raise AssertionError("the trace was read")
        yield  # pragma: no cover

    with pytest.raises(Exception, match="unknown eviction policy 'nope'"):
        analyze(trace(), sample_rate=1.0, policies=["nope"])


@pytest.mark.parametrize("args, message", [
    (["--trace", "{trace}", "--policy", "lru,nope"], "--policy: unknown eviction policy 'nope': known are"),
    (["--trace", "{trace}", "--policy", ","], "--policy ',': name policies"),
    (["--trace", "{trace}", "--policy", "lru", "--policy-points", "0"], "--policy-points '0'"),
    (["--trace", "{trace}", "--opt", "--grid", "1.5,3"], "whole numbers of blocks"),
    (["--opt"], "--opt needs --trace"),
    (["--policy", "lru"], "--policy needs --trace"),
])
def test_bad_input_is_one_line_and_nonzero(trace, capsys, args, message):
    assert main(["mrc", *[a.format(trace=trace) for a in args]]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tierd mrc: "), captured.err
    assert message in err[0]
    assert captured.out == ""


def test_a_live_report_says_the_curve_is_lrus_where_a_tier_evicts_otherwise(capsys):
    from tierd.cli.mrc import _print_report

    report = {"grid": [10], "shards": [[10, 0.5]], "prefix_shards": [[10, 0.4]], "requests": 3, "references": 9,
              "distinct": None, "max_hit_ratio": 0.5, "sample_rate": 1.0, "sampled_references": 9, "mae_vs_exact": {},
              "trace": "-",
              "tiers": [{"name": "dram", "bytes": 1 << 20, "cumulative_bytes": 1 << 20, "cumulative_blocks": 10,
                         "hit_ratio": 0.5, "prefix_hit_ratio": 0.4, "policy": "lru"},
                        {"name": "nvme", "bytes": 1 << 22, "cumulative_bytes": 5 << 20, "cumulative_blocks": 50,
                         "hit_ratio": 0.5, "prefix_hit_ratio": 0.4, "policy": "arc"}]}
    _print_report(report)
    out = capsys.readouterr().out
    assert "the curve is LRU's" in out and "nvme evicts with arc" in out and "dram evicts" not in out
    report["tiers"][1]["policy"] = "lru"
    _print_report(report)
    assert "the curve is LRU's" not in capsys.readouterr().out
