"""kill -9 of the daemon during sustained writes, repeated (bench/faults.py does >= 100 kills):
nothing acknowledged on NVMe is lost, no corrupt chunk is ever served, NVMe accounting equals the
files after every restart. One run of the scenario; each test checks one of its promises."""
from __future__ import annotations

import math

import pytest

from tests.faults.counts import fault_count
from tests.faults.daemon_kills import DaemonKillReport, run_daemon_kills

pytestmark = pytest.mark.faults

KILLS = fault_count(15, ci=6)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> DaemonKillReport:
    return run_daemon_kills(tmp_path_factory.mktemp("daemon-kills"), KILLS, seed=13, cold_starts=0)


def test_every_kill_happened_with_chunks_acknowledged_on_nvme(report: DaemonKillReport) -> None:
    assert report.kills == KILLS
    assert report.acked >= KILLS  # each kill waited for at least one new chunk on NVMe


def test_nothing_acknowledged_on_nvme_is_lost(report: DaemonKillReport) -> None:
    assert report.acked_lost == 0, report.examples


def test_no_corrupt_chunk_is_served_after_a_restart(report: DaemonKillReport) -> None:
    assert report.served >= report.acked  # every acknowledged chunk was read back at least once
    assert report.corrupt_served == 0, report.examples
    assert report.final_checked >= report.acked and report.final_corrupt == 0, report.examples
    assert report.claimed_misses == 0  # what a restarted daemon lists, it serves


def test_nvme_accounting_equals_the_files_after_every_restart(report: DaemonKillReport) -> None:
    assert report.accounting_errors == []


def test_serves_again_after_every_kill_and_stops_cleanly(report: DaemonKillReport) -> None:
    assert len(report.serve_again_s) == KILLS and all(math.isfinite(s) and s > 0 for s in report.serve_again_s)
    assert report.stop_status == 0
