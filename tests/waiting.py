"""Waiting on a condition with a deadline: how the tests synchronise with daemons, uploads and
background tasks (never a fixed sleep)."""
from __future__ import annotations

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
