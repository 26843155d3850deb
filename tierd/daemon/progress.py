"""Progress lines for the long steps of start-up and shutdown.

An operator watching `tierd serve` should never stare at a silent process: a step that may take
seconds (the NVMe index rebuilt from many chunk files, DRAM written down at shutdown) logs how
far it got, done/total, about once per interval. A step that ends within one interval logs no
progress line at all, so a quick start stays quiet.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")

#: Called with the seconds since the step began, once per interval while it lasts.
Reporter = Callable[[float], None]


async def report_while(work: Awaitable[T], interval: float, report: Reporter) -> T:
    """Await `work`, calling `report(elapsed)` every `interval` seconds until it is done.

    Cancelling the caller cancels `work` too. The result (or exception) of `work` is returned
    (or raised) as if it had been awaited directly.
    """
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            report(time.monotonic() - started)
    except asyncio.CancelledError:
        task.cancel()
        raise


def fraction(done: int, total: int) -> str:
    """"120/450 (26%)": a count out of a total, for progress lines."""
    pct = 100 * done // total if total else 100
    return f"{done}/{total} ({pct}%)"
