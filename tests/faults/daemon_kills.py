"""Scenario 1: SIGKILL the daemon in the middle of sustained writes, restart it, check what it serves.

One daemon directory lives through every kill, so each restart recovers a directory that has
already been through all the kills before it. Per kill:

1. A writer process (`tests.faults.child writer`) puts prompts of a fresh seed without pause;
   DRAM is small, so the daemon is demoting to NVMe the whole time.
2. The orchestrator polls `stat` until a random number (1..24) of new chunks has reached NVMe,
   then takes the snapshot that defines *acknowledged on NVMe*: the keys `ls --tier nvme`
   lists. The store flips a chunk's tiers to include nvme only after the chunk file is written,
   fdatasync'ed, renamed into place and its directory fsync'ed (`TieredStore._write_lower`),
   so a listed chunk is durable. Nothing removes NVMe copies during the run (capacity is far
   above what is written; each snapshot also checks that the tier evicted nothing).
3. SIGKILL, after no delay or a random one of up to 20 ms, while writes and demotions run.
4. Restart on the same directory; *time to serve again* runs from the SIGKILL until a get of an
   acknowledged chunk has returned its bytes.
5. Read back: every chunk acknowledged in this cycle, every chunk of this cycle's prompts that
   the daemon says it has, and a sample of the chunks acknowledged in earlier cycles. A chunk
   read back must be byte-identical (else *corrupt served*); an acknowledged one must be there
   (else *lost*). NVMe accounting must equal the chunk files on disk, with no temp file left.

At the end every chunk the daemon lists is read back once more. The baseline for the restart
time is a cold start: a daemon on an empty directory, from exec until it answers a lookup,
measured after the kills (the restarts have warmed the same file caches by then).
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.faults.workload import (
    FAULTS,
    REPO,
    LineReader,
    chunk_files,
    daemon_args,
    kill_quietly,
    payload,
    percentile,
    prompt_keys,
    tier,
    verify,
)
from tests.waiting import wait_for
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess

#: NVMe capacity of the run: far above what 100+ cycles write, so no acknowledged chunk is
#: ever evicted for room (which would be allowed, and would blur "lost").
NVME_CAPACITY = "16GiB"


@dataclass(slots=True)
class DaemonKillReport:
    """What the kills did. The invariants: `corrupt_served == 0`, `acked_lost == 0`."""

    kills: int = 0
    #: chunks listed on NVMe in the snapshots just before the kills (each counted once)
    acked: int = 0
    #: acknowledged chunks missing or wrong after a restart
    acked_lost: int = 0
    #: reads after restarts (each a get of one chunk) that returned bytes
    served: int = 0
    #: of those, bytes that differ from what was put
    corrupt_served: int = 0
    #: chunks the daemon said it had (lookup) whose get missed (allowed: a miss, never data)
    claimed_misses: int = 0
    #: chunks committed by the writer but not yet on NVMe at the kill, and gone (allowed)
    dram_only_lost: int = 0
    #: seconds from SIGKILL until a get of an acknowledged chunk returned it, per kill
    serve_again_s: list[float] = field(default_factory=list)
    #: of that, seconds until the restarted daemon printed "serving on" (exec, imports, NVMe scan)
    ready_s: list[float] = field(default_factory=list)
    #: seconds from exec of a daemon on an empty directory until it answered, per cold start
    cold_start_s: list[float] = field(default_factory=list)
    #: chunks read back in the final pass over everything listed, and how many were wrong
    final_checked: int = 0
    final_corrupt: int = 0
    #: NVMe used bytes/chunks differing from the files on disk, temp files left, evictions
    accounting_errors: list[str] = field(default_factory=list)
    #: exit status of the last daemon's SIGTERM
    stop_status: int | None = None
    #: a few keys (hex) of corrupt or lost chunks, for the failure message
    examples: list[str] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.serve_again_s, q)


def _start(socket: Path, nvme_dir: Path, log: Path, dram: str) -> DaemonProcess:
    return DaemonProcess(socket, daemon_args(nvme_dir, dram=dram, nvme=NVME_CAPACITY), log_path=log).start()


def _cold_start(sockdir: Path, workdir: Path, i: int, dram: str) -> float:
    """Seconds from exec to the first answered lookup, on an empty directory."""
    nvme_dir = workdir / f"cold-{i}"
    t0 = time.perf_counter()
    d = _start(sockdir / f"cold-{i}.sock", nvme_dir, workdir / "cold.log", dram)
    try:
        with Client.connect(d.socket) as c:
            c.lookup(prompt_keys(999_999_999, i))
            elapsed = time.perf_counter() - t0
    finally:
        d.stop()
        shutil.rmtree(nvme_dir, ignore_errors=True)
    return elapsed


def _read_until_lost(writer: LineReader, timeout: float) -> int:
    """The writer's lines up to its "lost N" (the daemon died under it): N prompts committed."""
    deadline = time.monotonic() + timeout
    while True:
        line = writer.readline(max(0.0, deadline - time.monotonic()))
        if not line:
            raise RuntimeError("the writer exited without reporting the lost daemon")
        if line.startswith("lost"):
            return int(line.split()[1])


def run_daemon_kills(workdir: Path, kills: int, *, seed: int = 0, cold_starts: int = 1, dram: str = "4MiB",
                     old_sample: int = 16, progress: Callable[[str], None] | None = None) -> DaemonKillReport:
    """Kill the daemon `kills` times under a writer; see the module docstring."""
    rng = random.Random(seed)
    report = DaemonKillReport()
    workdir.mkdir(parents=True, exist_ok=True)
    nvme_dir = workdir / "nvme"
    log = workdir / "daemon.log"
    with ExitStack() as stack:
        sockdir = Path(tempfile.mkdtemp(prefix="tdk-", dir="/tmp"))  # short: Unix socket paths
        stack.callback(shutil.rmtree, sockdir, True)
        socket = sockdir / "kill.sock"
        live: list[DaemonProcess] = [_start(socket, nvme_dir, log, dram)]
        stack.callback(lambda: live[-1].kill())
        writer = subprocess.Popen([sys.executable, "-m", "tests.faults.child", "writer"], cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        stack.callback(kill_quietly, writer)
        assert writer.stdin is not None
        writer_lines = LineReader(writer.stdout)
        acked_before: list[bytes] = []  # acknowledged in earlier cycles
        lost: set[bytes] = set()  # acknowledged, then missing or wrong after a restart
        for k in range(kills):
            cycle = seed * 1_000_000 + k
            with Client.connect(str(socket), map_arena=False, name="fault-observer") as obs:
                start = tier(obs.stat(), "nvme")["chunks"]
                writer.stdin.write(f"go {socket} {cycle}\n".encode())
                writer.stdin.flush()
                want = start + rng.randint(1, 24)
                wait_for(f"{want - start} new chunks on NVMe (kill {k})",
                         lambda: tier(obs.stat(), "nvme")["chunks"] >= want, 120)
                on_nvme = {bytes.fromhex(r["key"]) for r in obs.ls(tier="nvme")}
                evicted = tier(obs.stat(), "nvme")["evictions"]
                if rng.random() < 0.5:
                    time.sleep(rng.uniform(0, 0.02))  # a random kill point, not a synchronisation
                live[-1].kill()
            killed = time.perf_counter()
            if evicted:
                report.accounting_errors.append(f"kill {k}: NVMe evicted {evicted} chunks; raise NVME_CAPACITY")
            committed = _read_until_lost(writer_lines, 60)
            known = set(acked_before)
            new_acked = sorted(on_nvme - known)
            report.kills += 1
            report.acked += len(new_acked)

            live.append(_start(socket, nvme_dir, log, dram))
            report.ready_s.append(time.perf_counter() - killed)
            with Client.connect(str(socket), name="fault-checker") as c:
                probe = rng.choice(new_acked)
                got = c.get_chunks(FAULTS, [probe])
                report.serve_again_s.append(time.perf_counter() - killed)
                # Acknowledged in this cycle, and a sample of earlier cycles: all must be intact.
                checked = new_acked + rng.sample(acked_before, min(old_sample, len(acked_before)))
                intact, missed, corrupt = verify(c, checked)
                if got and got[0] != payload(probe).tobytes() and probe not in corrupt:
                    corrupt.append(probe)  # the first read after the restart, before any promotion
                report.served += intact + len(corrupt)
                report.corrupt_served += len(corrupt)
                lost.update(missed, corrupt)
                report.examples += [f"kill {k}: acknowledged chunk {key.hex()} missing" for key in missed[:3]]
                report.examples += [f"kill {k}: chunk {key.hex()} corrupt" for key in corrupt[:3]]
                # This cycle's other chunks: whatever the daemon says it has must be right.
                committed_keys = {key for i in range(committed) for key in prompt_keys(cycle, i)}
                cycle_keys = [key for key in [*committed_keys, *prompt_keys(cycle, committed)] if key not in on_nvme]
                codes = c.lookup(cycle_keys).codes if cycle_keys else b""
                present = [key for key, code in zip(cycle_keys, codes) if code != 255]
                intact, missed, corrupt = verify(c, present)
                report.served += intact + len(corrupt)
                report.corrupt_served += len(corrupt)
                report.claimed_misses += len(missed)
                report.examples += [f"kill {k}: chunk {key.hex()} corrupt" for key in corrupt[:3]]
                report.dram_only_lost += sum(code == 255 and key in committed_keys
                                             for key, code in zip(cycle_keys, codes))
                # NVMe accounting equals the files on disk; no temp file survived the restart.
                nvme = tier(c.stat(), "nvme")
                files = chunk_files(nvme_dir)
                disk = sum(f.stat().st_size for f in files)
                if nvme["used_bytes"] != disk or nvme["chunks"] != len(files):
                    report.accounting_errors.append(f"kill {k}: nvme used {nvme['used_bytes']} B / {nvme['chunks']} "
                                                    f"chunks, disk {disk} B / {len(files)} files")
                temps = [p.name for p in nvme_dir.rglob("*.tmp")]
                if temps:
                    report.accounting_errors.append(f"kill {k}: temp files left after restart: {temps[:3]}")
            acked_before.extend(new_acked)
            if progress is not None and (k + 1) % 10 == 0:
                progress(f"daemon kills: {k + 1}/{kills}, acknowledged so far {report.acked}, "
                         f"lost {len(lost)}, corrupt {report.corrupt_served}")
        writer.stdin.write(b"quit\n")
        writer.stdin.flush()
        with Client.connect(str(socket), name="fault-final") as c:
            everything = [bytes.fromhex(r["key"]) for r in c.ls()]
            intact, missed, corrupt = verify(c, everything)
            report.final_checked = len(everything)
            report.final_corrupt = len(corrupt)
            report.claimed_misses += len(missed)
            report.examples += [f"final pass: chunk {key.hex()} corrupt" for key in corrupt[:3]]
            lost.update(set(acked_before) - (set(everything) - set(missed) - set(corrupt)))
        report.acked_lost = len(lost)
        report.stop_status = live[-1].stop()
        writer.wait(30)
        # The baseline, measured last: by then the restarts have warmed the same caches.
        for i in range(cold_starts):
            report.cold_start_s.append(_cold_start(sockdir, workdir, i, dram))
    return report
