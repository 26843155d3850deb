"""A daemon run in-process (`Daemon.run()` on the test's event loop, served over a real Unix
socket to a real `AsyncClient`), so a test can make one of its parts fail the way a bug would
and watch what the daemon does about it: answer, log, restart, never go quiet."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tests.waiting import wait_until
from tierd.client import AsyncClient
from tierd.config import Config
from tierd.daemon.server import Daemon
from tierd.errors import InternalError
from tierd.keys import chunk_keys
from tierd.mrc.observer import AccessObserver
from tierd.store import TieredStore


@pytest.fixture
async def in_process(tmp_path: Path, short_dir: Path) -> AsyncIterator[Callable[[], Awaitable[Daemon]]]:
    """`await start()`: a daemon serving on a socket in `short_dir`, stopped at teardown."""
    running: list[tuple[Daemon, asyncio.Task[int]]] = []

    async def start() -> Daemon:
        config = Config(socket=str(short_dir / "d.sock"), dram="16MiB", nvme_dir=str(tmp_path / "nvme"),
                        nvme="64MiB", calibrate=False, mrc_sample_rate=1.0)
        daemon = Daemon(config)
        task = asyncio.create_task(daemon.run())
        running.append((daemon, task))
        await wait_until("the daemon's socket", lambda: task.done() or daemon._server is not None)
        assert not task.done(), task.exception()
        return daemon

    yield start
    for daemon, task in running:
        daemon.stop()
        assert await asyncio.wait_for(task, 60) == 0


async def test_an_unexpected_exception_in_a_request_is_an_internal_error_reply(
        in_process: Callable[[], Awaitable[Daemon]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A handler that fails in a way nobody foresaw (here: the store's `ls` raising a plain
    RuntimeError, as a bug would) answers that request with InternalError and keeps serving
    the same connection; the traceback is in the daemon's log."""
    daemon = await in_process()
    real_ls = TieredStore.ls
    calls = 0

    def ls_failing_once(self: TieredStore, **filters: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in ls")
        return real_ls(self, **filters)

    monkeypatch.setattr(TieredStore, "ls", ls_failing_once)
    client = await AsyncClient.connect(daemon.config.socket)
    try:
        keys = chunk_keys(SMALL, np.arange(256) + 5)
        async with await client.put(SMALL, keys) as batch:
            batch.view(0)[:] = payload_for(keys[0], SMALL.chunk_bytes)
        with caplog.at_level(logging.ERROR, logger="tierd.daemon.dispatch"):
            with pytest.raises(InternalError, match=r"ls failed unexpectedly \(RuntimeError: a bug in ls\)"):
                await client.call("ls")
        assert any(r.exc_info and "a bug in ls" in str(r.exc_info[1]) for r in caplog.records)
        # the same connection still works, and nothing stored changed
        assert [row["key"] for row in (await client.call("ls"))["chunks"]] == [keys[0].hex()]
        assert (await client.lookup(keys)).prefix == 1
    finally:
        await client.close()


async def test_a_crash_in_the_observers_drain_loop_is_logged_and_the_loop_keeps_working(
        in_process: Callable[[], Awaitable[Daemon]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The access observer's drain loop dies once (its `drain` raises, as a bug would): the
    supervisor logs why, restarts it, and the lookups queued since still reach the curve,
    without anyone asking for a report (which would drain them itself)."""
    real_drain = AccessObserver.drain
    crashed = asyncio.Event()

    def drain_failing_once(self: AccessObserver) -> None:
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("a bug in the drain")
        real_drain(self)

    monkeypatch.setattr(AccessObserver, "drain", drain_failing_once)
    daemon = await in_process()
    assert daemon.store is not None
    observer = next(o for o in daemon.store.observers if isinstance(o, AccessObserver))
    client = await AsyncClient.connect(daemon.config.socket)
    try:
        keys = chunk_keys(SMALL, np.arange(256 * 4) + 9)
        with caplog.at_level(logging.ERROR, logger="tierd.supervise"):
            await client.lookup(keys)
            await asyncio.wait_for(crashed.wait(), 30)
            for _ in range(3):
                await client.lookup(keys)
            await wait_until("the restarted drain loop to count the lookups", lambda: observer.requests >= 3)
        assert observer.alive() and observer._task is not None and observer._task.restarts == 1
        died = [r for r in caplog.records if "tierd-access-observer died" in r.getMessage()]
        assert died and died[0].exc_info and "a bug in the drain" in str(died[0].exc_info[1])
        assert observer.mrc.references >= 3 * len(keys)  # the curve saw every key of the counted lookups
    finally:
        await client.close()
