"""What the fault scenarios store and how they watch the daemon.

Every chunk's bytes are a function of its key (`payload`), so any process — the writer that
put it, the orchestrator after a crash, a test after a fuzzing run — can tell a byte-identical
chunk from a corrupt one without remembering what was written. Keys come from seeded token
streams (`prompt_keys`), so the orchestrator can recompute what a child process wrote.

This module is imported by the child processes that get killed (`tests.faults.child`), so it
imports only what a client needs: no pytest, no torch.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

#: The repository root: child processes run `python -m tests.faults.child` from here.
REPO = Path(__file__).resolve().parents[2]

#: 2 layers, 2 KV heads, head dim 64, bf16, 256 tokens: 256 KiB chunks. Small enough that a
#: few MiB of DRAM holds a dozen chunks and the NVMe tier fills within a fraction of a second.
FAULTS = Layout("faults-model", "bfloat16", 2, 2, 64, chunk_tokens=256)
CHUNK = FAULTS.chunk_bytes
#: Chunks per prompt (one put_chunks call, one lease).
PROMPT_CHUNKS = 4



def payload(key: bytes, nbytes: int = CHUNK) -> np.ndarray:
    """The bytes a chunk must hold: derived from its key, identical in every process."""
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    return rng.integers(0, 256, nbytes, dtype=np.uint8)


def prompt_keys(seed: int, index: int, chunks: int = PROMPT_CHUNKS, namespace: str = "default") -> list[bytes]:
    """Keys of prompt `index` of the token stream `seed`: distinct for every (seed, index)."""
    tokens = np.random.default_rng([seed, index]).integers(0, 32000, chunks * FAULTS.chunk_tokens)
    return chunk_keys(FAULTS, tokens, namespace)


def put_prompt(client: Client, keys: Sequence[bytes], namespace: str = "default") -> int:
    """Put whole chunks of `keys` (payload derived from each key); returns how many were stored."""
    return client.put_chunks(FAULTS, list(keys), [payload(k) for k in keys], namespace=namespace)


def verify(client: Client, keys: Iterable[bytes]) -> tuple[int, list[bytes], list[bytes]]:
    """Get every key on its own and compare bytes. Returns (intact count, missed keys, corrupt
    keys). One key per get, so a miss in the middle does not hide the chunks after it."""
    intact = 0
    missed: list[bytes] = []
    corrupt: list[bytes] = []
    for key in keys:
        got = client.get_chunks(FAULTS, [key])
        if not got:
            missed.append(key)
        elif got[0] == payload(key).tobytes():
            intact += 1
        else:
            corrupt.append(key)
    return intact, missed, corrupt


def daemon_args(nvme_dir: Path | str | None, *, dram: str, nvme: str = "1GiB", extra: Sequence[str] = ()) -> list[str]:
    """`tierd serve` flags for a fault run: calibration off (start-up in well under a second)."""
    args = ["--dram", dram, "--no-calibrate", *extra]
    if nvme_dir is None:
        return [*args, "--nvme", "0"]
    return [*args, "--nvme-dir", str(nvme_dir), "--nvme", nvme]


def tierd_cli(socket: str, *args: str, timeout: float = 60) -> Any:
    """Run `tierd <args> --socket S --json` as an operator would and parse its output."""
    r = subprocess.run([sys.executable, "-m", "tierd", *args, "--socket", socket, "--json"],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"tierd {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def tier(stat: dict[str, Any], name: str) -> dict[str, Any]:
    """One tier's entry of a `stat` reply."""
    return next(t for t in stat["tiers"] if t["name"] == name)


def chunk_files(nvme_dir: Path) -> list[Path]:
    return [p for p in nvme_dir.rglob("*.chunk") if p.is_file()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between the two nearest samples; NaN
    for no samples."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class LineReader:
    """Lines a child process prints, read with a deadline: select on the raw pipe with a buffer
    of our own, so a child that hangs fails the run instead of blocking it forever."""

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete line from the child within the deadline (have {self.buf[-200:]!r})")
        if select.select([self.fd], [], [], remaining)[0]:
            data = os.read(self.fd, 65536)
            self.eof = not data
            self.buf += data

    def readline(self, timeout: float) -> str:
        """The next line, with its newline; "" once the child closed its output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf and not self.eof:
            self._fill(deadline)
        if b"\n" not in self.buf:
            line, self.buf = self.buf, b""
        else:
            line, self.buf = self.buf.split(b"\n", 1)
            line += b"\n"
        return line.decode(errors="replace")

    def rest(self, timeout: float) -> str:
        """Everything until the child closes its output (call it after the child is dead)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        out, self.buf = self.buf, b""
        return out.decode(errors="replace")


def kill_quietly(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a child we started, if it still runs, and reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
