"""Scenario 2: client processes SIGKILLed mid-put and mid-get leak no slot.

A daemon holds a few known prompts. Rounds of client processes (`tests.faults.child`) start
together, each in one of three modes, and each is killed:

- `put-hold`: reserved a prompt's slots and wrote some of them (one only partly), killed
  between reserve and commit — certainly inside the window, because it blocks there;
- `get-hold`: leased a known prompt and read some of it, killed between acquire and release;
- `loop`: random puts and verified gets without pause, killed after a random 0–250 ms, so the
  kill lands wherever it lands: mid-frame, mid-copy, between any two calls.

After each round, once the daemon has noticed every dead connection (its session count is
back to the observer alone), nothing may be held: no reservation, no lease, and DRAM used bytes
equal to the bytes of the committed chunks that have a DRAM copy. At the end the same is read
through `tierd stat --json` and `tierd ls --tier dram --json`, then `tierd evict --all --tier dram`
must find nothing busy and leave DRAM empty, and a fresh client must be able to reserve every
slot of the arena (a leaked extent would be missing from the allocator's free space). Every
committed chunk must read back byte-identical: a killed put never becomes visible half-written.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.faults.workload import (
    CHUNK,
    FAULTS,
    REPO,
    LineReader,
    daemon_args,
    kill_quietly,
    prompt_keys,
    put_prompt,
    tier,
    tierd_cli,
    verify,
)
from tests.waiting import wait_for
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess

KNOWN_SEED = 424_242
KNOWN_PROMPTS = 6  # 24 chunks of 256 KiB: 6 MiB of the 8 MiB arena
MODES = ("put-hold", "get-hold", "loop")
ALIGN = 4096  # the arena allocator's extent alignment


def _rounded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(slots=True)
class ClientKillReport:
    """Slots and bytes after the kills. The invariant: `slots_leaked == 0` and the rest agree."""

    kills: int = 0
    by_mode: Counter[str] = field(default_factory=Counter)
    #: reads by the killed clients (before their kill) that did not match what was put
    corrupt_reads: int = 0
    #: rounds after which something was still held, with what
    round_leaks: list[str] = field(default_factory=list)
    #: from `tierd stat --json` / `tierd ls --tier dram --json` after the last round
    reservations: int = -1
    leases: int = -1
    dram_used_bytes: int = -1
    dram_committed_bytes: int = -1
    dram_capacity_bytes: int = 0
    #: `tierd evict --all --tier dram`: chunks it found leased or moving; DRAM used after it
    evict_busy: int = -1
    dram_used_after_evict: int = -1
    #: arena slots, and how many a fresh client could reserve after the evict
    slots_total: int = 0
    slots_reservable: int = 0
    #: committed chunks read back at the end, and how many differed from what was put
    committed_checked: int = 0
    committed_corrupt: int = 0
    #: listed chunks whose get missed (the daemon claimed them but could not serve them)
    committed_missed: int = 0
    child_errors: list[str] = field(default_factory=list)

    @property
    def slots_leaked(self) -> int:
        """Slots no fresh client could get back after every kill and an evict of DRAM."""
        return self.slots_total - self.slots_reservable


def _held(stat: dict, obs_sessions: int = 1) -> str:
    """What a quiet daemon still holds that it should not (empty string if nothing)."""
    out = []
    if stat["reservations"]:
        out.append(f"{stat['reservations']} reservations")
    if stat["leases"]:
        out.append(f"{stat['leases']} leases")
    if stat["sessions"] != obs_sessions:
        out.append(f"{stat['sessions']} sessions")
    return ", ".join(out)


def _dram_accounting(c: Client) -> tuple[int, int]:
    """(DRAM used bytes, bytes of committed chunks with a DRAM copy) at one moment: `ls` between
    two `stat`s that agree, since the demoter may free a slot between any two calls."""
    while True:
        used = tier(c.stat(), "dram")["used_bytes"]
        committed = sum(_rounded(r["size"]) for r in c.ls(tier="dram"))
        if tier(c.stat(), "dram")["used_bytes"] == used:
            return used, committed


def _settled(c: Client, timeout: float) -> tuple[int, int]:
    """DRAM accounting once used equals committed, or the last reading after `timeout` seconds
    (a leak never settles; a write-down or promotion finishing in the background does)."""
    deadline = time.monotonic() + timeout
    while True:
        used, committed = _dram_accounting(c)
        if used == committed or time.monotonic() > deadline:
            return used, committed
        time.sleep(0.01)


def run_client_kills(workdir: Path, kills: int, *, seed: int = 0, parallel: int = 4, dram: str = "8MiB",
                     progress: Callable[[str], None] | None = None) -> ClientKillReport:
    """Kill `kills` client processes at random points of their puts and gets; see the docstring."""
    rng = random.Random(seed)
    report = ClientKillReport()
    workdir.mkdir(parents=True, exist_ok=True)
    known = f"{KNOWN_SEED}:{KNOWN_PROMPTS}"
    with ExitStack() as stack:
        sockdir = Path(tempfile.mkdtemp(prefix="tdc-", dir="/tmp"))
        stack.callback(shutil.rmtree, sockdir, True)
        daemon = DaemonProcess(sockdir / "c.sock", daemon_args(workdir / "nvme", dram=dram, nvme="512MiB"),
                               log_path=workdir / "daemon.log").start()
        stack.callback(daemon.kill)
        with Client.connect(daemon.socket, name="fault-setup") as c:
            for i in range(KNOWN_PROMPTS):
                put_prompt(c, prompt_keys(KNOWN_SEED, i))
        obs = stack.enter_context(Client.connect(daemon.socket, map_arena=False, name="fault-observer"))
        round_no = 0
        while report.kills < kills:
            children: list[tuple[str, subprocess.Popen[bytes], LineReader]] = []
            for j in range(min(parallel, kills - report.kills)):
                mode = rng.choice(MODES)
                child_seed = seed * 1_000_000 + report.kills + j
                proc = subprocess.Popen([sys.executable, "-m", "tests.faults.child", mode, daemon.socket,
                                         str(child_seed), known], cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                stack.callback(kill_quietly, proc)
                children.append((mode, proc, LineReader(proc.stdout)))
            for mode, proc, lines in children:
                first = lines.readline(60)  # "held ..." or "ready": in the window, or running
                if not first:
                    proc.wait(30)
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    report.child_errors.append(f"{mode} exited {proc.returncode} before its kill: {err[-500:]}")
                    continue
                if mode == "get-hold":
                    report.corrupt_reads += int(first.split()[2])  # "held <leased> <corrupt>"
                if mode == "loop":
                    time.sleep(rng.uniform(0, 0.25))  # the random kill point
                kill_quietly(proc)
                report.kills += 1
                report.by_mode[mode] += 1
            for mode, proc, lines in children:
                report.corrupt_reads += lines.rest(30).count("corrupt")
                proc.communicate(timeout=30)
            round_no += 1
            # The daemon notices each dead connection on its own; wait until it has.
            wait_for("the daemon to close the killed clients' sessions", lambda: obs.stat()["sessions"] == 1, 30)
            held = _held(obs.stat())
            used, committed = _settled(obs, 10)
            if held or used != committed:
                report.round_leaks.append(f"round {round_no}: {held or 'nothing held'}; DRAM used {used} B, "
                                          f"committed chunks in DRAM {committed} B")
            if progress is not None and round_no % 5 == 0:
                progress(f"client kills: {report.kills}/{kills}, leaks so far {len(report.round_leaks)}")
        _settled(obs, 10)  # no write-down left running: the CLI's stat and ls see the same moment
        obs.close()

        # The operator's view, through the CLI (stat, ls, stat again: the two stats must agree).
        for _ in range(3):
            stat = tierd_cli(daemon.socket, "stat")
            dram_rows = tierd_cli(daemon.socket, "ls", "--tier", "dram")
            if tier(tierd_cli(daemon.socket, "stat"), "dram")["used_bytes"] == tier(stat, "dram")["used_bytes"]:
                break
        report.reservations, report.leases = stat["reservations"], stat["leases"]
        report.dram_used_bytes = tier(stat, "dram")["used_bytes"]
        report.dram_capacity_bytes = tier(stat, "dram")["capacity_bytes"]
        report.dram_committed_bytes = sum(_rounded(r["size"]) for r in dram_rows)
        evicted = tierd_cli(daemon.socket, "evict", "--all", "--tier", "dram", "--yes")
        report.evict_busy = evicted["busy"] + evicted["pinned"]
        report.dram_used_after_evict = tier(tierd_cli(daemon.socket, "stat"), "dram")["used_bytes"]

        # Every slot of the arena can be reserved again, then the committed chunks read back.
        report.slots_total = report.dram_capacity_bytes // _rounded(CHUNK)
        with Client.connect(daemon.socket, name="fault-final") as c:
            probe = [k for i in range(report.slots_total // 4 + 1) for k in prompt_keys(seed + 7_777_777, i)]
            batch = c.put(FAULTS, probe[: report.slots_total])
            report.slots_reservable = len(batch.reserved)
            batch.abort()
            everything = [bytes.fromhex(r["key"]) for r in c.ls()]
            intact, missed, corrupt = verify(c, everything)
            report.committed_checked = len(everything)
            report.committed_corrupt = len(corrupt)
            report.committed_missed = len(missed)
        daemon.stop()
    return report
