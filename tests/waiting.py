"""Waiting on a condition with a deadline: how the tests synchronise with daemons, uploads and
background tasks (never a fixed sleep)."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(what: str, condition: Callable[[], T], timeout: float = 30.0, *, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy, and return that; TimeoutError naming
    `what` after `timeout` seconds. `interval` keeps the poller from starving the daemon on 2 cores."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(interval)


async def wait_until(what: str, condition: Callable[[], object], timeout: float = 30.0, *,
                     interval: float = 0.002) -> None:
    """`wait_for` for a test running on the event loop it waits on (an in-process store or
    daemon): polls without blocking the loop, so the work it waits for can go on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        await asyncio.sleep(interval)
