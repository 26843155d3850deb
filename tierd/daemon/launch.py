"""Start and stop a daemon as a subprocess, for tests, benchmarks and scripts.

Readiness is the daemon's own "serving on" line on stderr, read with a deadline, so callers
never sleep and hope. Stopping is SIGTERM with a deadline, then SIGKILL. Until it is ready,
every stderr line is also kept with the moment it arrived (`timeline`), so start-up can be
measured from outside the daemon.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence


class DaemonProcess:
    """A `tierd serve` child process. Use as a context manager or call `stop()`."""

    def __init__(self, socket_path: str | Path, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
                 log_path: str | Path | None = None) -> None:
        self.socket = str(socket_path)
        self.args = list(args)
        self.env = env
        self.log_path = Path(log_path) if log_path else Path(self.socket).with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.banner = ""
        #: (time.monotonic() when it was read, line) for each stderr line up to the ready line.
        self.timeline: list[tuple[float, str]] = []

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        cmd = [sys.executable, "-m", "tierd", "serve", "--socket", self.socket, *self.args]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.banner = self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        seen = b""
        try:
            with open(self.log_path, "ab") as log:
                while b"serving on" not in seen:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.kill()
                        raise TimeoutError(f"tierd did not start within {timeout}s:\n{seen.decode(errors='replace')}")
                    if not sel.select(remaining):
                        continue
                    data = os.read(fd, 65536)  # raw reads: no buffered line hiding from select
                    if not data:
                        self.proc.wait()
                        raise RuntimeError(
                            f"tierd exited with {self.proc.returncode} before serving:\n{seen.decode(errors='replace')}"
                        )
                    log.write(data)
                    now = time.monotonic()
                    start = seen.rfind(b"\n") + 1  # the line in progress
                    seen += data
                    *complete, _rest = seen[start:].split(b"\n")
                    self.timeline.extend((now, line.decode(errors="replace")) for line in complete)
        finally:
            sel.close()
        tail = seen[seen.rfind(b"\n") + 1 :]
        if tail:  # the ready line itself, when its newline has not come yet
            self.timeline.append((time.monotonic(), tail.decode(errors="replace")))
        self._drain_stderr()
        text = seen.decode(errors="replace")
        return next(line for line in text.splitlines() if "serving on" in line)

    def _drain_stderr(self) -> None:
        """Keep copying the daemon's stderr to the log so it never blocks on a full pipe."""
        import threading

        assert self.proc is not None and self.proc.stderr is not None
        stream, path = self.proc.stderr, self.log_path

        def pump() -> None:
            with open(path, "ab") as log:
                for line in stream:
                    log.write(line)
                    log.flush()

        threading.Thread(target=pump, daemon=True).start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "DaemonProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
