"""Fixtures for the SGLang backend tests: a real daemon subprocess (tests/conftest.py),
backends built the way SGLang's cache controller builds them, and one second SGLang process
for the session (`peer.py`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.connectors.sglang.pools import make_pool, storage_config  # imports SGLang first

from connectors.sglang.backend import TierdHiCacheStorage  # noqa: E402

BackendFactory = Callable[..., TierdHiCacheStorage]


@pytest.fixture
def backend_factory() -> Iterator[BackendFactory]:
    """`make(socket, pool, extra={...}, **config)`: a backend with `pool` registered; all closed at teardown."""
    made: list[TierdHiCacheStorage] = []

    def make(socket: str, pool: Any, extra: dict[str, Any] | None = None, **config: Any) -> TierdHiCacheStorage:
        b = TierdHiCacheStorage(storage_config({"socket": socket, **(extra or {})}, **config), {})
        made.append(b)
        b.register_mem_pool_host(pool)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture(params=["mha", "mla"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["layer_first", "page_first", "page_first_direct"])
def host_layout(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pool(kind: str, host_layout: str) -> Any:
    return make_pool(kind, host_layout)


REPO = Path(__file__).resolve().parents[3]


class Peer:
    """The session's second SGLang process (`python -m tests.connectors.sglang.peer`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "tests.connectors.sglang.peer"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        #: What importing SGLang without triton and torchvision left behind (its first line).
        self.import_report: dict[str, Any] = self._reply()["import"]

    def store(self, socket: str, kind: str, layout: str, seed: int, pages: int) -> list[bool]:
        """The peer stores `pages` pages of its own pool (filled from `seed`) on the daemon at `socket`."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{socket} {kind} {layout} {seed} {pages}\n")
        self.proc.stdin.flush()
        reply = self._reply()
        assert "error" not in reply, reply["error"]
        return reply["stored"]

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the peer answers every line; EOF only if it died
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the SGLang peer exited with {self.proc.returncode}: "
                               f"{self.proc.stderr.read()[-3000:] if self.proc.stderr else ''}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def sglang_peer() -> Iterator[Peer]:
    peer = Peer()
    try:
        yield peer
    finally:
        peer.close()
