"""Background tasks that never silently disappear.

A long-running task (the demoter, an upload worker, a metrics loop) that dies of an unexpected
exception would otherwise vanish with its traceback in a "Task exception was never retrieved"
line at exit, and what it did stops for good (e.g. every put that needs room then waits out its
deadline). `supervise` runs it again after logging why it died, backing off if it keeps dying.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


class Supervised:
    """One supervised background task; `restarts` counts how often it died and came back."""

    def __init__(self, name: str, work: Callable[[], Awaitable[Any]], *, max_backoff: float = 5.0) -> None:
        self.name = name
        self.work = work
        self.max_backoff = max_backoff
        self.restarts = 0
        self.task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def _run(self) -> None:
        backoff = 0.0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.work()
                return  # finished on its own (e.g. told to stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                if loop.time() - started > 10 * self.max_backoff:
                    backoff = 0.0  # it had been healthy for a while: start the backoff afresh
                backoff = min(self.max_backoff, max(0.01, backoff * 2))
                log.exception("background task %s died; restarting it in %.2f s (restart %d)", self.name,
                              backoff, self.restarts)
                await asyncio.sleep(backoff)

    def alive(self) -> bool:
        """Whether the task is still running (or finished on its own); False if it was lost."""
        return not self.task.done() or (not self.task.cancelled() and self.task.exception() is None)

    def cancel(self) -> None:
        self.task.cancel()


def log_if_failed(task: "asyncio.Task[Any]") -> None:
    """Done callback for a one-shot background task (not worth restarting): if it died of an
    exception, say so in the log now rather than never."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s died", task.get_name(), exc_info=exc)


def supervise(name: str, work: Callable[[], Awaitable[Any]]) -> Supervised:
    """Start `work()` as a background task that is restarted whenever it dies of an exception."""
    return Supervised(name, work)
