"""Client processes killed with SIGKILL mid-put and mid-get (bench/faults.py does >= 100):
the daemon returns every reservation and lease, DRAM accounting equals the committed chunks,
every arena slot can be reserved again, and no half-written put ever becomes visible."""
from __future__ import annotations

import pytest

from tests.faults.counts import fault_count
from tests.faults.client_kills import MODES, ClientKillReport, run_client_kills

pytestmark = pytest.mark.faults

KILLS = fault_count(20, ci=9)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ClientKillReport:
    return run_client_kills(tmp_path_factory.mktemp("client-kills"), KILLS, seed=7)


def test_every_client_was_killed_inside_its_work(report: ClientKillReport) -> None:
    assert report.child_errors == []
    assert report.kills == KILLS
    assert set(report.by_mode) == set(MODES)  # puts held, leases held, and random points


def test_nothing_is_held_after_any_round(report: ClientKillReport) -> None:
    assert report.round_leaks == []


def test_stat_shows_no_leaked_slot(report: ClientKillReport) -> None:
    """Read through `tierd stat --json` and `tierd ls --tier dram --json`, as an operator would."""
    assert report.reservations == 0 and report.leases == 0
    assert report.dram_used_bytes == report.dram_committed_bytes
    assert report.evict_busy == 0 and report.dram_used_after_evict == 0


def test_every_arena_slot_can_be_reserved_again(report: ClientKillReport) -> None:
    assert report.slots_total == report.dram_capacity_bytes // (256 << 10) > 0
    assert report.slots_leaked == 0


def test_no_half_written_put_became_visible(report: ClientKillReport) -> None:
    assert report.committed_checked > 0
    assert report.committed_corrupt == 0 and report.committed_missed == 0
    assert report.corrupt_reads == 0  # and the killed readers never saw wrong bytes either
