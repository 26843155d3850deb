"""Start-up and shutdown of a real daemon subprocess: the socket is up within a second on the
default arena size, the ready line names the tiers, requests are served while the arena is still
being pre-faulted and before calibration, and long steps (shutdown flush, NVMe index rebuild)
log done/total as they go."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.config import default_dram_bytes
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.sizes import GiB, format_size
from tierd.cost.tiers import DECLARED


def _line_time(d: DaemonProcess, text: str) -> float:
    return next(t for t, line in d.timeline if text in line)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition on the daemon until it holds, failing at the deadline. The pause between
    polls only spares the two cores the daemon is measuring on; the condition is what is waited for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _log_lines(d: DaemonProcess, text: str) -> list[str]:
    return [line for line in d.log().splitlines() if text in line]


def test_socket_is_up_within_a_second_on_the_default_arena(tmp_path: Path, short_dir: Path) -> None:
    # Only the NVMe directory is moved off $HOME; the arena gets its machine-dependent default
    # (a quarter of RAM, bounded by /dev/shm: 5.9 GiB on the 24 GiB test machine).
    d = DaemonProcess(short_dir / "s.sock", ["--nvme-dir", str(tmp_path / "nvme")], log_path=tmp_path / "d.log")
    with d.start(timeout=60):
        # Measured outside the daemon: from its first line (logged as serve() begins, after the
        # interpreter and imports) to its ready line, both read off its stderr as they came.
        took = _line_time(d, "serving on") - _line_time(d, "starting")
        assert took < 1.0, f"socket took {took:.2f} s after 'starting':\n{d.log()}"
        reported = float(re.search(r"ready in ([0-9.]+) s", d.banner)[1])
        assert reported < 1.0
        with Client.connect(d.socket, map_arena=False) as c:  # accepting right away
            st = c.stat()
        assert st["arena_bytes"] == default_dram_bytes() > 0
        assert f"dram {format_size(default_dram_bytes())}" in d.banner
    print(f"\nsocket up {took * 1000:.0f} ms after 'starting' ({reported:.2f} s reported) "
          f"with the default arena of {format_size(st['arena_bytes'])}")


def test_ready_line_names_every_tier_and_its_size(tmp_path: Path, short_dir: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    d = DaemonProcess(short_dir / "a.sock", ["--dram", "256MiB", "--nvme-dir", str(tmp_path / "nvme"),
                                             "--nvme", "1GiB", "--object-url", f"file://{objects}",
                                             "--object", "3GiB", "--no-calibrate"], log_path=tmp_path / "a.log")
    with d.start():
        assert len(_log_lines(d, "serving on")) == 1
        assert (f"tiers: dram 256 MiB, nvme 1 GiB in {tmp_path / 'nvme'}, "
                f"object file://{objects} (writes up to 3 GiB);") in d.banner
    d = DaemonProcess(short_dir / "b.sock", ["--dram", "128MiB", "--nvme", "0"], log_path=tmp_path / "b.log")
    with d.start():
        assert "tiers: dram 128 MiB;" in d.banner  # no NVMe, no object tier: not named


def test_round_trip_while_the_arena_is_still_being_prefaulted(tmp_path: Path, short_dir: Path) -> None:
    d = DaemonProcess(short_dir / "s.sock", ["--dram", "4GiB", "--nvme-dir", str(tmp_path / "nvme"),
                                             "--nvme", "1GiB"], log_path=tmp_path / "d.log")
    keys = chunk_keys(SMALL, np.arange(256 * 8))
    payloads = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    with d.start(), Client.connect(d.socket) as c:
        assert c.info["arena_populated"] is False  # so this client mapped the arena lazily
        assert c.put_chunks(SMALL, keys, payloads) == 8
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
        arena = c.stat()["arena"]
        assert arena["bytes"] == 4 * GiB and arena["populated_bytes"] < arena["bytes"], arena  # still going
        assert not arena["done"]

        # Pre-faulting finishes in the background and changes no byte already written.
        _wait_for(lambda: c.stat()["arena"]["done"], 120, "the arena's pre-faulting")
        arena = c.stat()["arena"]
        assert arena["populated_bytes"] == arena["reserved_bytes"] == 4 * GiB and arena["error"] is None
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
        with Client.connect(d.socket) as late:
            assert late.info["arena_populated"] is True
            assert late.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
    assert _log_lines(d, "reserved and populated in")


def test_calibration_runs_after_the_socket_is_up(tmp_path: Path, short_dir: Path) -> None:
    d = DaemonProcess(short_dir / "s.sock", ["--dram", "512MiB", "--nvme-dir", str(tmp_path / "nvme"),
                                             "--nvme", "256MiB"], log_path=tmp_path / "d.log")
    with d.start(), Client.connect(d.socket, map_arena=False) as c:
        _wait_for(lambda: c.stat()["calibration"] == "done", 120, "calibration")
        costs = c._call("costs")["tiers"]
        assert set(costs) == {"dram", "nvme"}
        # measured figures replaced the declared ones
        assert (costs["dram"]["bandwidth_bytes_per_s"], costs["dram"]["latency_s"]) != pytest.approx(DECLARED["dram"])
        lines = d.log().splitlines()
        ready = next(i for i, line in enumerate(lines) if "serving on" in line)
        calibrated = next(i for i, line in enumerate(lines) if "calibrated tier dram" in line)
        assert ready < calibrated  # measured after the socket was up, not before


def test_declared_costs_serve_until_calibration(tmp_path: Path, short_dir: Path) -> None:
    d = DaemonProcess(short_dir / "s.sock", ["--dram", "128MiB", "--nvme-dir", str(tmp_path / "nvme"),
                                             "--nvme", "256MiB", "--no-calibrate"], log_path=tmp_path / "d.log")
    with d.start(), Client.connect(d.socket, map_arena=False) as c:
        assert c.stat()["calibration"] == "off"
        costs = c._call("costs")["tiers"]
        assert (costs["nvme"]["bandwidth_bytes_per_s"], costs["nvme"]["latency_s"]) == pytest.approx(DECLARED["nvme"])


def test_shutdown_flush_and_index_rebuild_log_their_progress(tmp_path: Path, short_dir: Path) -> None:
    nvme = tmp_path / "nvme"
    args = ["--dram", "256MiB", "--nvme-dir", str(nvme), "--nvme", "1GiB", "--no-calibrate",
            "--progress-interval", "1ms"]
    keys = chunk_keys(SMALL, np.arange(256 * 400))  # 400 chunks of 512 KiB: 200 MiB, under the watermarks
    payloads = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    d = DaemonProcess(short_dir / "a.sock", args, log_path=tmp_path / "a.log")
    with d.start(), Client.connect(d.socket) as c:
        assert c.put_chunks(SMALL, keys, payloads) == 400
        assert c.lookup(keys).tiers == ["dram"] * 400  # DRAM-only: the shutdown has to write them all
    assert d.stop() == 0

    assert _log_lines(d, "shutdown: writing 400 DRAM-only chunks (200 MiB) down to nvme")
    progress = [int(m[1]) for line in _log_lines(d, "shutdown: wrote")
                if (m := re.search(r"wrote (\d+)/400 \(\d+%\) DRAM-only chunks to nvme", line))]
    assert len(progress) >= 2 and progress == sorted(progress), progress  # moving, never backwards
    assert progress[0] < 400
    assert re.search(r"shutdown: wrote 400/400 \(100%\) DRAM-only chunks to nvme in [0-9.]+ s", d.log())

    # A restart rebuilds the index from the 400 chunk files, saying how far it got.
    d2 = DaemonProcess(short_dir / "b.sock", args, log_path=tmp_path / "b.log")
    with d2.start(), Client.connect(d2.socket) as c:
        scanned = [int(m[1]) for line in _log_lines(d2, "chunk headers")
                   if (m := re.search(rf"nvme index in {re.escape(str(nvme))}: read (\d+)/400 \(", line))]
        assert scanned and scanned == sorted(scanned) and scanned[0] < 400, d2.log()
        assert c.lookup(keys).tiers == ["nvme"] * 400
        assert c.get_chunks(SMALL, keys[:5]) == [p.tobytes() for p in payloads[:5]]
    # and the scan's lines came before the ready line
    lines = d2.log().splitlines()
    assert max(i for i, line in enumerate(lines) if "chunk headers" in line) < \
        next(i for i, line in enumerate(lines) if "serving on" in line)
