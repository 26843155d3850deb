"""bench.workload's `--canary` without an engine: the flag, the connector config it sends, and
the figures that price the live canary against the same configuration without it."""
from __future__ import annotations

import json

import pytest

from bench.workload import parse_args, tierd_kv_config
from bench.workload_report import RequestResult, RunResult, canary_counts, canary_figures, canary_table


def _run(config: str, loaded: list[int], wall_s: float, compared: tuple[int, int] | None = None) -> RunResult:
    requests = [RequestResult(0.1, 0.2, 512, n, 0, n) for n in loaded]
    before = after = None
    if compared is not None:
        before = {"tiers": [], "canary": {"compared": compared[0], "diverged": 0}}
        after = {"tiers": [], "canary": {"compared": compared[1], "diverged": 0}}
    return RunResult(config, "chat", wall_s, requests, before, after)


def test_the_flag_takes_sample_rates():
    assert parse_args([]).canary == []
    assert parse_args(["--canary", "0.01,1"]).canary == [0.01, 1.0]
    for bad in ("0", "1.5", "x", "0.01,", "-0.1"):
        with pytest.raises(SystemExit):
            parse_args(["--canary", bad])


def test_the_configurations_run_with_the_canary_off_unless_asked():
    assert tierd_kv_config("/s", False)["kv_connector_extra_config"]["verify_sample"] == 0.0
    assert tierd_kv_config("/s", True, 0.01)["kv_connector_extra_config"]["verify_sample"] == 0.01


def test_canary_figures_compare_with_the_same_configuration_without_it():
    off = _run("c", [0, 512, 512, 512], wall_s=2.0)
    on = _run("c", [0, 0, 512, 512], wall_s=2.5, compared=(3, 7))
    assert canary_counts(on, off) == {"requests_sampled": 1, "chunks_compared": 4, "chunks_diverged": 0}
    (fig,) = canary_figures([off], [(0.01, on)])
    line = json.loads(fig.line().removeprefix("FIGURE "))
    assert line["name"] == "workload_chat_requests_per_s_tierd_dram_nvme_canary_0.01"
    assert line["value"] == 1.6 and line["baseline_value"] == 2.0 and line["ratio"] == 0.8
    assert line["baseline"] == "(c) tierd DRAM+NVMe, canary off" and line["requests_sampled"] == 1
    assert "0.01" in canary_table([off], [(0.01, on)]).splitlines()[1]
    assert canary_figures([], [(0.01, on)]) == []  # no run without the canary: no figure
