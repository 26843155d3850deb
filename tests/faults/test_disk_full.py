"""A full disk under the NVMe tier, and a /dev/shm too small for the arena, on real small
filesystems: no crash, no wrong data, clear errors. Needs root to mount (skips, saying so,
where it cannot)."""
from __future__ import annotations

import pytest

from tests.faults.disk_full import (
    DiskFullReport,
    ShmResult,
    mount_unavailable,
    run_disk_full,
    run_small_shm,
    shm_namespace_unavailable,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module", params=["tmpfs", "ext4"])
def full(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DiskFullReport:
    reason = mount_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return run_disk_full(tmp_path_factory.mktemp(f"disk-full-{request.param}"), request.param)


def test_filling_the_disk_neither_crashes_nor_serves_wrong_data(full: DiskFullReport) -> None:
    assert full.short_put is not None, f"the disk never filled: {full.puts}"
    assert full.alive_while_full
    assert full.accounting_ok, full.accounting  # files on disk, plus writes in flight
    assert full.dram_checked > 0 and full.corrupt_served == 0


def test_puts_work_again_once_room_is_freed(full: DiskFullReport) -> None:
    assert full.put_after_evict[0] == 4, full.put_after_evict


def test_sigterm_on_the_full_disk_exits_cleanly(full: DiskFullReport) -> None:
    """Was: the index metadata write at shutdown let OSError ENOSPC out of close(): exit 1 and a
    traceback, over metadata that is only advisory."""
    assert full.stop_clean, full.stop_tail


def test_everything_listed_after_a_restart_on_the_full_disk_is_served_intact(full: DiskFullReport) -> None:
    assert full.restart_listed > 0
    assert full.restart_intact == full.restart_listed
    assert full.restart_missed == 0 and full.restart_corrupt == 0
    assert full.temp_files_left == 0


def test_the_daemon_idles_while_the_disk_is_full(full: DiskFullReport) -> None:
    """Was: the demoter retried the failing writes of the same DRAM chunks in a tight loop, a core
    at 100% and thousands of logged tracebacks a second."""
    assert full.cpu_while_full < 0.5, f"{full.cpu_while_full:.2f} cores"
    assert full.log_lines_per_s < 50, f"{full.log_lines_per_s:.0f} log lines/s"


# Was a bug: DRAM full of chunks that cannot be written down made such a get wait the 5 s reserve
# deadline and miss; now a promotion may drop an unwritable DRAM chunk while write-downs fail.
def test_chunks_on_nvme_are_served_while_the_disk_is_full(full: DiskFullReport) -> None:
    served, seconds = full.nvme_read_while_full
    assert served and seconds < 1.0, f"served {served} after {seconds:.1f}s"


@pytest.fixture(scope="module")
def shm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ShmResult]:
    reason = shm_namespace_unavailable()
    if reason:
        pytest.skip(reason)
    return {r.case: r for r in run_small_shm(tmp_path_factory.mktemp("shm"))}


@pytest.mark.parametrize("case", ["dram_64MiB", "dram_default"])
def test_an_arena_larger_than_dev_shm_is_a_clear_error_at_start(shm: dict[str, ShmResult], case: str) -> None:
    r = shm[case]
    assert r.returncode == 1, r.stderr
    assert not r.traceback, r.stderr
    assert r.last_line.startswith("tierd serve:") and "/dev/shm" in r.last_line and "--dram" in r.last_line


def test_an_arena_that_fits_starts_in_the_same_namespace(shm: dict[str, ShmResult]) -> None:
    r = shm["dram_4MiB_control"]
    assert r.served and r.returncode == 0, r.stderr
