"""One vLLM engine per configuration for a whole test session (the pytest side of
``engine_serve.py``).

Starting an engine costs ~15-25 s on the 2-core machine, running a test's prompts well under a
second: :class:`EnginePool` keeps a long-lived runner subprocess per configuration (model,
dtype, block size, context, prefix caching, KV-transfer config, extra engine arguments) and
sends each call's prompts to it. What a call returns is what :func:`vllm_runner.run_vllm_doc`
returns for the same arguments, plus ``log``: the engine's log lines written during the call.

What keeps tests apart: each call reconnects the engine's tierd connector (tests start a fresh
daemon on the same socket path, see ``conftest.py``), waits for the connector's saves to end
and resets vLLM's prefix cache before answering. A call that kills a process under the engine
(``kill_pid_after``) retires that engine afterwards. Only single-process engines are pooled (the
drain needs the engine core in the runner process); any other configuration runs one-shot
through ``run_vllm_doc``, as does a call with ``fresh=True`` (for a configuration no other test
uses: it then takes no room in the pool).

At most ``max_alive`` engines stay up (``TIERD_E2E_ENGINES``, default 5): the least recently
used is shut down to make room, so memory stays bounded (an idle engine holds ~1.8 GiB).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

from tests.e2e.vllm_runner import REPO_ROOT, VllmRunError, engine_command, engine_env, log_tail, run_vllm_doc

#: Arguments of run_vllm_doc that belong to one call, not to the engine.
PER_CALL = ("max_tokens", "logprobs", "sequential", "kill_pid_after", "timeout", "workdir")
START_TIMEOUT_S = 600.0


@dataclass
class _Engine:
    """One runner subprocess in ``--serve`` mode."""

    key: str
    proc: subprocess.Popen[bytes]
    replies: IO[str]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def read_reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.replies], [], [], 1.0)
            if ready:
                line = self.replies.readline()
                if line:
                    return json.loads(line)
                raise VllmRunError(f"vLLM runner exited with {self.proc.wait()}\n{log_tail(self.log_path)}")
            if self.proc.poll() is not None:
                raise VllmRunError(f"vLLM runner exited with {self.proc.returncode}\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise VllmRunError(f"vLLM runner gave no reply within {timeout}s\n{log_tail(self.log_path)}")

    def end_requests(self) -> None:
        """End of requests: the runner shuts its engine down and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        self.end_requests()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.replies.close()


class EnginePool:
    """Engines by configuration; see the module docstring."""

    def __init__(self, workdir: Path, max_alive: int | None = None) -> None:
        self.workdir = workdir
        self.max_alive = max_alive or int(os.environ.get("TIERD_E2E_ENGINES", "5"))
        self._engines: OrderedDict[str, _Engine] = OrderedDict()
        self.starts = 0  # engine start-ups this pool caused (pooled and one-shot)

    def run(self, model_dir: str | Path, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list[dict[str, Any]]:
        return self.run_doc(model_dir, prompts, **kwargs)["results"]

    def run_doc(self, model_dir: str | Path, prompts: Sequence[Sequence[int]], *, fresh: bool = False,
                **kwargs: Any) -> dict[str, Any]:
        """Like ``run_vllm_doc(model_dir, prompts, **kwargs)``, on a pooled engine where possible."""
        call = {k: kwargs.pop(k) for k in PER_CALL if k in kwargs}
        if fresh or not kwargs.get("single_process", False):
            self.starts += 1
            doc = run_vllm_doc(model_dir, prompts, **call, **kwargs)
            doc["log"] = Path(doc["log_file"]).read_text(errors="replace") if doc.get("log_file") else None
            return doc
        engine = self._engine(model_dir, kwargs, call.get("timeout", START_TIMEOUT_S))
        kill = call.get("kill_pid_after")
        request = {"prompts": [list(map(int, p)) for p in prompts], "max_tokens": call.get("max_tokens", 8),
                   "logprobs": call.get("logprobs", 5), "sequential": call.get("sequential", False),
                   "kill_pid": kill[0] if kill else None, "kill_after": kill[1] if kill else 0}
        offset = engine.log_path.stat().st_size
        try:
            assert engine.proc.stdin is not None
            engine.proc.stdin.write((json.dumps(request) + "\n").encode())
            engine.proc.stdin.flush()
            reply = engine.read_reply(call.get("timeout", 900.0))
        except (VllmRunError, BrokenPipeError) as exc:
            self._retire(engine)
            raise VllmRunError(f"{exc}") from exc
        finally:
            if kill is not None:  # its connector has seen a dead daemon: not reused
                self._retire(engine)
        with open(engine.log_path, "rb") as f:
            f.seek(offset)
            log = f.read().decode("utf-8", "replace")
        if "error" in reply:
            raise VllmRunError(f"vLLM runner failed on a batch:\n{reply['error']}\n{log[-6000:]}")
        return {**engine.info, **reply, "log": log, "log_file": None}

    def close(self) -> None:
        engines = list(self._engines.values())
        self._engines.clear()
        for engine in engines:
            engine.end_requests()  # all shut down at once: each takes seconds
        for engine in engines:
            engine.close()

    # ------------------------------------------------------------------ helpers

    def _engine(self, model_dir: str | Path, options: dict[str, Any], timeout: float) -> _Engine:
        key = json.dumps({"model": str(model_dir), **options}, sort_keys=True, default=str)
        engine = self._engines.get(key)
        if engine is not None and engine.proc.poll() is None:
            self._engines.move_to_end(key)
            return engine
        if engine is not None:
            self._retire(engine)
        while len(self._engines) >= self.max_alive:
            self._retire(next(iter(self._engines.values())))  # least recently used
        return self._start(key, model_dir, options, timeout)

    def _start(self, key: str, model_dir: str | Path, options: dict[str, Any], timeout: float) -> _Engine:
        env = options.get("env")
        engine_opts = {k: v for k, v in options.items() if k not in ("single_process", "env")}
        self.starts += 1
        log_path = self.workdir / f"engine-{self.starts}.log"
        cmd = engine_command(model_dir, **engine_opts)
        read_fd, write_fd = os.pipe()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*cmd, "--serve", "--reply-fd", str(write_fd)], cwd=REPO_ROOT,
                                    env=engine_env(True, env), stdin=subprocess.PIPE, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=(write_fd,))
        os.close(write_fd)
        engine = _Engine(key, proc, os.fdopen(read_fd, "r"), log_path)
        try:
            engine.info = engine.read_reply(min(timeout, START_TIMEOUT_S))
        except VllmRunError:
            engine.close()
            raise
        engine.info.pop("ready", None)
        self._engines[key] = engine
        return engine

    def _retire(self, engine: _Engine) -> None:
        self._engines.pop(engine.key, None)
        engine.close()
