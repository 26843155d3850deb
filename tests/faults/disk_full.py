"""Scenario 4: the NVMe tier's disk fills up, and /dev/shm is too small for the arena.

Disk full. The NVMe directory is on a real small filesystem — an 8 MiB tmpfs, or a 12 MiB ext4
image on a loop device — while `--nvme` declares 64 MiB, so the daemon believes it has room and
the filesystem says ENOSPC. `run_disk_full`:

1. puts prompts (1 MiB each) until one is stored short (DRAM full of chunks that cannot be
   written down); every put's time is kept: the short one is the degraded path;
2. fills whatever space is left with a file of its own (another program filling the disk);
3. while the disk is full: the daemon must be alive; NVMe accounting must equal the chunk files
   on disk; every chunk with a DRAM copy must read back byte-identical; one NVMe-only chunk is
   read (timed: its promotion needs a DRAM slot); the daemon's CPU use and log growth over one
   second are measured (a daemon with nothing to do should be idle);
4. `tierd evict --tier nvme` of six NVMe-only chunks frees room: a put must then succeed again,
   without a restart;
5. the chunks only in DRAM are evicted and the NVMe writes in flight end (so no failing write
   can free room later), the disk is filled up again, then SIGTERM: the metadata write at
   shutdown meets ENOSPC; exit status, and whether the shutdown finished ("tierd: stopped");
6. restart on the full disk: every chunk it lists must read back byte-identical.

Small /dev/shm. `run_small_shm` starts the daemon in a private mount namespace (`unshare`) whose
/dev/shm is a 16 MiB tmpfs: there is no configuration option for the arena's directory (the
store takes one, `TieredStore(arena_dir=...)`, but neither the config nor `build_store` passes
it), so the real default path is replaced instead. An arena larger than that, explicit or the
default size, must stop the daemon at start with a one-line message and no traceback; a 4 MiB
arena in the same namespace must start and answer (the control).

Mounting needs root (CAP_SYS_ADMIN); `mount_unavailable()` says why a machine cannot.
Every mount is undone in a `finally`, after the daemon on it has been stopped.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.faults.workload import (
    FAULTS,
    REPO,
    chunk_files,
    cpu_seconds,
    daemon_args,
    payload,
    prompt_keys,
    put_prompt,
    tier,
    tierd_cli,
    verify,
)
from tests.waiting import wait_for
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess

MiB = 1 << 20
IO_THREADS = 4  # the daemon's default --io-threads
FS_SIZES = {"tmpfs": 8 * MiB, "ext4": 12 * MiB}
DISK_SEED = 5_150


# ------------------------------------------------------------------ small filesystems

def mount_unavailable(kind: str) -> str:
    """Why a `kind` filesystem cannot be mounted here ("" if it can)."""
    if os.geteuid() != 0:
        return "mounting a small filesystem needs root (CAP_SYS_ADMIN); run the fault suite as root"
    if kind == "ext4":
        for tool in ("mkfs.ext4", "losetup"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install e2fsprogs mount)"
        if not Path("/dev/loop-control").exists():
            return "no loop devices here (/dev/loop-control is missing)"
    return ""


@contextlib.contextmanager
def small_filesystem(kind: str, mountpoint: Path, size: int) -> Iterator[Path]:
    """A real filesystem of `size` bytes mounted at `mountpoint` for the duration of the block:
    `tmpfs`, or `ext4` in an image file on a loop device. Always unmounted (lazily if busy)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    image = mountpoint.with_suffix(".img")
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)]
    elif kind == "ext4":
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(image), str(mountpoint)]
    else:
        raise ValueError(f"filesystem kind {kind!r}: use tmpfs or ext4")
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        try:
            yield mountpoint
        finally:
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    finally:
        image.unlink(missing_ok=True)


def fill(directory: Path) -> int:
    """Write zeros into a new file in `directory` until the filesystem refuses even one more
    byte (ENOSPC), in ever smaller writes; returns the bytes written."""
    written = 0
    name = f"filler-{len(list(directory.glob('filler-*')))}"
    with open(directory / name, "wb", buffering=0) as f:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            block = bytes(size)
            try:
                while True:
                    written += f.write(block)
            except OSError:
                pass
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return written


# ------------------------------------------------------------------ disk full


@dataclass(slots=True)
class DiskFullReport:
    """What a full NVMe disk did to the daemon. The invariants: alive, no corrupt chunk served,
    accounting equal to the files, every chunk served again after a restart."""

    kind: str
    fs_bytes: int = 0
    #: (chunks stored, chunks asked, seconds) per put, until the first short one
    puts: list[tuple[int, int, float]] = field(default_factory=list)
    filler_bytes: int = 0
    alive_while_full: bool = False
    accounting_ok: bool = False
    accounting: str = ""
    dram_checked: int = 0
    corrupt_served: int = 0
    #: one get of an NVMe-only chunk while the disk was full: served?, seconds
    nvme_read_while_full: tuple[bool, float] = (False, 0.0)
    #: CPU the daemon used (cores) and log lines it wrote per second, while full and idle
    cpu_while_full: float = 0.0
    log_lines_per_s: float = 0.0
    #: a put after `evict --tier nvme` freed room: chunks stored of 4, seconds
    put_after_evict: tuple[int, float] = (0, 0.0)
    stop_status: int | None = None
    #: exit status 0 after "tierd: stopped" (no exception escaped the shutdown)
    stop_clean: bool = False
    stop_tail: str = ""
    #: after a restart on the full disk: chunks listed, read back intact, missed, corrupt
    restart_listed: int = 0
    restart_intact: int = 0
    restart_missed: int = 0
    restart_corrupt: int = 0
    temp_files_left: int = 0

    @property
    def short_put(self) -> tuple[int, int, float] | None:
        return next((p for p in self.puts if p[0] < p[1]), None)


def _log_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run_disk_full(workdir: Path, kind: str) -> DiskFullReport:
    """Fill the NVMe tier's filesystem under a live daemon; see the module docstring."""
    report = DiskFullReport(kind)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"daemon-{kind}.log"
    with ExitStack() as stack:
        mnt = stack.enter_context(small_filesystem(kind, workdir / f"mnt-{kind}", FS_SIZES[kind]))
        st = os.statvfs(mnt)
        report.fs_bytes = st.f_blocks * st.f_frsize
        nvme_dir = mnt / "nvme"
        sockdir = Path(tempfile.mkdtemp(prefix="tdd-", dir="/tmp"))
        stack.callback(shutil.rmtree, sockdir, True)
        socket = sockdir / "d.sock"
        args = daemon_args(nvme_dir, dram="4MiB", nvme="64MiB")
        daemon = DaemonProcess(socket, args, log_path=log).start()
        stack.callback(daemon.kill)

        with Client.connect(str(socket), name="fault-disk") as c:
            # 1. Fill: DRAM (4 MiB) and the filesystem, until a put comes back short.
            for i in range(2 * (FS_SIZES[kind] + 4 * MiB) // MiB):
                t0 = time.perf_counter()
                stored = put_prompt(c, prompt_keys(DISK_SEED, i))
                report.puts.append((stored, 4, time.perf_counter() - t0))
                if stored < 4:
                    break
            # 2. Somebody else takes the space that is left.
            report.filler_bytes = fill(mnt)
            # 3. While full.
            c.lookup([])  # a round trip: the daemon still answers
            report.alive_while_full = daemon.proc is not None and daemon.proc.poll() is None
            nvme = tier(c.stat(), "nvme")
            files = chunk_files(nvme_dir)
            disk = sum(f.stat().st_size for f in files)
            # used_bytes counts writes in flight too (the demoter keeps retrying while the disk
            # is full): up to one chunk file per I/O thread above the files on disk.
            in_flight = nvme["used_bytes"] - disk
            file_bytes = max((f.stat().st_size for f in files), default=1)  # every chunk file: one size
            report.accounting_ok = nvme["chunks"] == len(files) and nvme["used_bytes"] <= nvme["capacity_bytes"] \
                and 0 <= in_flight <= IO_THREADS * file_bytes and in_flight % file_bytes == 0
            report.accounting = f"nvme used {nvme['used_bytes']} B / {nvme['chunks']} chunks; " \
                                f"files {disk} B / {len(files)}"
            rows = c.ls()
            in_dram = [bytes.fromhex(r["key"]) for r in rows if "dram" in r["tiers"]]
            intact, missed, corrupt = verify(c, in_dram)
            report.dram_checked, report.corrupt_served = len(in_dram), len(corrupt)
            nvme_only = [bytes.fromhex(r["key"]) for r in rows if r["tiers"] == ["nvme"]]
            if nvme_only:
                t0 = time.perf_counter()
                got = c.get_chunks(FAULTS, [nvme_only[-1]])
                report.nvme_read_while_full = (bool(got), time.perf_counter() - t0)
                if got and got[0] != payload(nvme_only[-1]).tobytes():
                    report.corrupt_served += 1
            cpu0, lines0, t0 = cpu_seconds(daemon.pid), _log_lines(log), time.perf_counter()
            time.sleep(1.0)  # a measurement window: what the daemon does with nothing asked of it
            elapsed = time.perf_counter() - t0
            report.cpu_while_full = (cpu_seconds(daemon.pid) - cpu0) / elapsed
            report.log_lines_per_s = (_log_lines(log) - lines0) / elapsed
            # 4. Room comes back (an operator drops six NVMe copies): puts work again.
            if len(nvme_only) >= 8:
                tierd_cli(str(socket), "evict", "--tier", "nvme", "--yes", *[k.hex() for k in nvme_only[:6]])
                t0 = time.perf_counter()
                stored = put_prompt(c, prompt_keys(DISK_SEED + 1, 0))
                report.put_after_evict = (stored, time.perf_counter() - t0)

            # 5. Quiesce, so that no failing write can free room after the disk is filled again:
            # drop the chunks that exist only in DRAM until none is left and no write is in flight.
            def drained() -> bool:
                dram_only = [bytes.fromhex(r["key"]) for r in c.ls() if r["tiers"] == ["dram"]]
                if dram_only:
                    c.evict(keys=dram_only)  # one being written down right now is skipped: next round
                    return False
                disk = sum(f.stat().st_size for f in chunk_files(nvme_dir))
                return tier(c.stat(), "nvme")["used_bytes"] == disk

            wait_for("no chunk left only in DRAM and no NVMe write in flight", drained, 30, interval=0.05)
            report.filler_bytes += fill(mnt)  # somebody takes the room step 4 freed

        # SIGTERM with the disk full: the metadata write at shutdown meets ENOSPC.
        tail_from = log.stat().st_size
        report.stop_status = daemon.stop(timeout=60)
        tail = log.read_bytes()[tail_from:].decode(errors="replace")
        report.stop_clean = report.stop_status == 0 and "tierd: stopped" in tail
        report.stop_tail = tail[-1500:]

        # 6. Restart on the full disk: whatever it lists, it serves intact.
        daemon = DaemonProcess(socket, args, log_path=log).start()
        stack.callback(daemon.kill)
        with Client.connect(str(socket), name="fault-disk-restart") as c:
            listed = [bytes.fromhex(r["key"]) for r in c.ls()]
            intact, missed, corrupt = verify(c, listed)
            report.restart_listed, report.restart_intact = len(listed), intact
            report.restart_missed, report.restart_corrupt = len(missed), len(corrupt)
        report.temp_files_left = len(list(nvme_dir.rglob("*.tmp")))
        daemon.stop(timeout=60)
    return report


# ------------------------------------------------------------------ /dev/shm too small

SHM_SIZE = "16m"


def _unshare_prefix() -> list[str]:
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private", "--"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]


def shm_namespace_unavailable() -> str:
    """Why this machine cannot give a process a private /dev/shm ("" if it can)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    r = subprocess.run([*_unshare_prefix(), "sh", "-c", f"mount -t tmpfs -o size={SHM_SIZE} tmpfs /dev/shm"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot mount a private /dev/shm here: {r.stderr.strip()}"
    return ""


def _in_small_shm(args: list[str]) -> list[str]:
    """`tierd serve ARGS` in a mount namespace whose /dev/shm is a fresh SHM_SIZE tmpfs. The mount
    disappears with the namespace: nothing to clean up, whatever happens."""
    script = f'mount -t tmpfs -o size={SHM_SIZE} tmpfs /dev/shm && exec "$@"'
    return [*_unshare_prefix(), "sh", "-c", script, "sh", sys.executable, "-m", "tierd", "serve", *args]


@dataclass(slots=True)
class ShmResult:
    """One daemon start against the small /dev/shm."""

    case: str
    returncode: int | None
    stderr: str
    seconds: float
    served: bool = False

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    @property
    def last_line(self) -> str:
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        return lines[-1] if lines else ""


def run_small_shm(workdir: Path) -> list[ShmResult]:
    """Start the daemon against a 16 MiB /dev/shm: a 64 MiB arena, the default arena, and (the
    control) a 4 MiB one, which must serve."""
    results: list[ShmResult] = []
    workdir.mkdir(parents=True, exist_ok=True)
    sockdir = Path(tempfile.mkdtemp(prefix="tds-", dir="/tmp"))
    try:
        for case, dram in (("dram_64MiB", ["--dram", "64MiB"]), ("dram_default", [])):
            args = ["--socket", str(sockdir / f"{case}.sock"), "--nvme", "0", "--no-calibrate", *dram]
            t0 = time.perf_counter()
            r = subprocess.run(_in_small_shm(args), capture_output=True, text=True, timeout=120, cwd=REPO)
            results.append(ShmResult(case, r.returncode, r.stderr, time.perf_counter() - t0))
        socket = sockdir / "control.sock"
        args = ["--socket", str(socket), "--nvme", "0", "--no-calibrate", "--dram", "4MiB"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(_in_small_shm(args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, cwd=REPO)
        try:
            def answers() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"the control daemon exited {proc.returncode}")
                try:  # its arena is in the namespace's /dev/shm: a control-plane client only
                    with Client.connect(str(socket), map_arena=False, timeout=5) as c:
                        return c.stat()["arena_bytes"] == 4 * MiB
                except Exception:
                    return False

            served = bool(wait_for("the 4 MiB control daemon to answer", answers, 60, interval=0.05))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            results.append(ShmResult("dram_4MiB_control", proc.returncode, err, time.perf_counter() - t0, served))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    return results
