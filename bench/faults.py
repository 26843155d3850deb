"""The fault suite with the issue's counts (issue 13), printed as FIGURE lines.

    python -m bench.faults [--quick] [--seed N] [--only kill9,clients,frames,disk,shm] [--dir DIR]

The scenarios are the ones `tests/faults` runs (one implementation each, in `tests/faults/`),
with larger counts:

- kill9: SIGKILL of the daemon under a writer, >= 100 times; acknowledged-on-NVMe chunks kept,
  chunks served intact after the restarts, time from the kill until a get serves again (p50,
  p99) against a cold start of a daemon on an empty directory measured in the same run;
- clients: >= 100 client processes killed mid-put / mid-get; arena slots a fresh client can
  reserve afterwards against the arena's slots (a leak shows as fewer);
- frames: 10,000 hostile frames (hypothesis); known chunks intact afterwards, and the share of
  answerable frames answered (the rest must be explained by a known bug, which it names);
- disk: the NVMe tier on a full 8 MiB tmpfs and a full 12 MiB ext4 (loop): chunks served intact
  after a restart on the full disk, and the put that found the disk full against the puts before;
- shm: a /dev/shm too small for the arena: daemons that stopped at start with a clear message.

`--quick` (about 30 s): 3 daemon kills, 4 client kills, 400 frames, tmpfs only. Exit status 1 if an
invariant failed (each listed on stderr before the figures): the figures are printed anyway.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.figures import figure
from tests.faults.client_kills import run_client_kills
from tests.faults.daemon_kills import run_daemon_kills
from tests.faults.disk_full import mount_unavailable, run_disk_full, run_small_shm, shm_namespace_unavailable
from tests.faults.frame_fuzz import run_frame_fuzz
from tests.faults.workload import percentile

SCENARIOS = ("kill9", "clients", "frames", "disk", "shm")


def _say(text: str) -> None:
    print(f"faults: {text}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts (each scenario once, briefly)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--dir", default=None, help="where the NVMe directories go (default: a temp dir)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SCENARIOS):
        ap.error(f"--only {args.only!r}: choose from {', '.join(SCENARIOS)}")
    kills, client_kills, frames = (3, 4, 400) if args.quick else (100, 100, 10_000)
    kinds = ["tmpfs"] if args.quick else ["tmpfs", "ext4"]
    base = Path(tempfile.mkdtemp(prefix="tdfaults-", dir=args.dir))
    failures: list[str] = []
    figures: list[dict] = []  # printed last, together
    started = time.perf_counter()
    try:
        if "kill9" in only:
            t0 = time.perf_counter()
            r = run_daemon_kills(base / "kill9", kills, seed=args.seed, cold_starts=1 if args.quick else 5,
                                 progress=_say)
            _say(f"kill9: {r.kills} kills in {time.perf_counter() - t0:.0f}s")
            if r.acked_lost or r.corrupt_served or r.final_corrupt or r.claimed_misses or r.accounting_errors:
                failures.append(f"kill9: lost {r.acked_lost}, corrupt {r.corrupt_served + r.final_corrupt}, "
                                f"claimed but missed {r.claimed_misses}, accounting {r.accounting_errors[:3]}, "
                                f"{r.examples[:5]}")
            common = {"kills": r.kills, "acked_on_nvme": r.acked, "lost": r.acked_lost,
                      "corrupt_served": r.corrupt_served + r.final_corrupt, "dram_only_lost": r.dram_only_lost}
            cold = statistics.median(r.cold_start_s)
            figures += [
                dict(name="faults_kill9_acked_kept", value=r.acked - r.acked_lost, unit="chunks",
                     baseline="acknowledged on NVMe before the kills", baseline_value=r.acked, **common),
                dict(name="faults_kill9_served_intact", unit="reads",
                     value=r.served - r.corrupt_served + r.final_checked - r.final_corrupt,
                     baseline="reads that returned bytes after restarts", baseline_value=r.served + r.final_checked,
                     **common),
                dict(name="faults_kill9_serve_again_p50", value=r.p(0.5), unit="s", higher_is_better=False,
                     baseline="cold start to first answer, p50", baseline_value=cold, kills=r.kills,
                     until_serving_on_p50=round(percentile(r.ready_s, 0.5), 3)),
                dict(name="faults_kill9_serve_again_p99", value=r.p(0.99), unit="s", higher_is_better=False,
                     baseline="cold start to first answer, p50", baseline_value=cold, kills=r.kills,
                     max=round(max(r.serve_again_s), 3), until_serving_on_p99=round(percentile(r.ready_s, 0.99), 3)),
            ]

        if "clients" in only:
            t0 = time.perf_counter()
            r = run_client_kills(base / "clients", client_kills, seed=args.seed, progress=_say)
            _say(f"clients: {r.kills} kills in {time.perf_counter() - t0:.0f}s")
            if r.slots_leaked or r.round_leaks or r.reservations or r.leases or r.evict_busy \
                    or r.dram_used_bytes != r.dram_committed_bytes or r.dram_used_after_evict \
                    or r.committed_corrupt or r.committed_missed or r.corrupt_reads or r.child_errors:
                failures.append(f"clients: {r}")
            figures.append(dict(
                name="faults_client_kill_slots_free", value=r.slots_reservable, unit="slots",
                baseline="arena slots", baseline_value=r.slots_total, kills=r.kills, by_mode=dict(r.by_mode),
                slots_leaked=r.slots_leaked, reservations=r.reservations, leases=r.leases,
                dram_used_bytes=r.dram_used_bytes, committed_dram_bytes=r.dram_committed_bytes,
                rounds_with_leaks=len(r.round_leaks), corrupt_reads=r.corrupt_reads + r.committed_corrupt))

        if "frames" in only:
            t0 = time.perf_counter()
            r = run_frame_fuzz(base / "frames", frames, seed=args.seed, progress=_say)
            _say(f"frames: {r.frames} frames in {time.perf_counter() - t0:.0f}s")
            if not r.daemon_alive or r.known_intact != r.known_chunks or r.stray_chunks or r.malformed_replies \
                    or r.unexplained or r.reservations_after or r.leases_after:
                failures.append(f"frames: alive {r.daemon_alive}, intact {r.known_intact}/{r.known_chunks}, "
                                f"stray {r.stray_chunks}, malformed {r.malformed_replies[:3]}, "
                                f"unanswered, no known bug: {len(r.unexplained)}: {r.unexplained[:3]}")
            answered = r.replies_ok + sum(r.replies_error.values())
            extra = {"frames": r.frames, "requests": r.requests, "raw_streams": r.raw_streams,
                     "connections": r.connections, "daemon_alive": r.daemon_alive,
                     "unanswered": len(r.unanswered), "unanswered_by_known_bug": r.unanswered_by_bug(),
                     "log_tracebacks": r.log_tracebacks}
            figures += [
                dict(name="faults_frames_known_chunks_intact", value=r.known_intact, unit="chunks",
                     baseline="chunks stored before the frames", baseline_value=r.known_chunks, **extra),
                dict(name="faults_frames_answered", value=answered, unit="frames",
                     baseline="frames the daemon must answer", baseline_value=answered + len(r.unanswered),
                     frames_per_s=round(r.frames / r.seconds, 1)),
            ]

        if "disk" in only:
            for kind in kinds:
                reason = mount_unavailable(kind)
                if reason:
                    _say(f"disk {kind}: not run: {reason}")
                    continue
                t0 = time.perf_counter()
                r = run_disk_full(base / f"disk-{kind}", kind)
                _say(f"disk {kind}: {time.perf_counter() - t0:.0f}s")
                if not r.alive_while_full or r.corrupt_served or not r.accounting_ok or r.restart_missed \
                        or r.restart_corrupt or r.short_put is None or not r.stop_clean \
                        or r.put_after_evict[0] != 4 or r.cpu_while_full >= 0.5 or r.log_lines_per_s >= 50:
                    failures.append(f"disk {kind}: {r}")
                short = r.short_put or (0, 0, float("nan"))
                before = [p[2] for p in r.puts if p[0] == p[1]] or [float("nan")]
                extra = {"fs_bytes": r.fs_bytes, "cpu_cores_while_full": round(r.cpu_while_full, 2),
                         "log_lines_per_s_while_full": round(r.log_lines_per_s),
                         "nvme_read_while_full": [r.nvme_read_while_full[0], round(r.nvme_read_while_full[1], 2)],
                         "put_after_freeing_room": [r.put_after_evict[0], round(r.put_after_evict[1], 3)],
                         "sigterm_clean": r.stop_clean, "corrupt_served": r.corrupt_served + r.restart_corrupt}
                figures += [
                    dict(name=f"faults_disk_full_{kind}_served_after_restart", value=r.restart_intact,
                         unit="chunks", baseline="chunks listed after the restart",
                         baseline_value=r.restart_listed, **extra),
                    dict(name=f"faults_disk_full_{kind}_short_put", value=short[2], unit="s",
                         higher_is_better=False, baseline="put p50 before the disk was full",
                         baseline_value=percentile(before, 0.5), stored=short[0], asked=short[1]),
                ]

        if "shm" in only:
            reason = shm_namespace_unavailable()
            if reason:
                _say(f"shm: not run: {reason}")
            else:
                results = run_small_shm(base / "shm")
                refused = [x for x in results if x.case != "dram_4MiB_control"]
                clear = [x for x in refused if x.returncode == 1 and not x.traceback
                         and x.last_line.startswith("tierd serve:")]
                control = next(x for x in results if x.case == "dram_4MiB_control")
                if len(clear) != len(refused) or not control.served:
                    failures.append(f"shm: {results}")
                figures.append(dict(
                    name="faults_small_shm_clear_errors", value=len(clear), unit="starts",
                    baseline="starts with an arena larger than /dev/shm", baseline_value=len(refused),
                    messages={x.case: x.last_line for x in refused}, control_4MiB_served=control.served))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    _say(f"total {time.perf_counter() - started:.0f}s")
    for f in failures:
        print(f"INVARIANT FAILED: {f}", file=sys.stderr)
    for f in figures:
        figure(**f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
