"""Closing the store at daemon shutdown, with progress lines.

`TieredStore.close()` writes every DRAM-only chunk down to the first lower tier and gives queued
uploads time to go out: with a full multi-GiB arena that is seconds to minutes, and an operator
waiting on `systemctl stop` should see it move. The store has no progress hook, so this watches
from outside: the chunks that were DRAM-only when shutdown began, and how many of them have a
copy on the target tier since, plus the upload queue's length.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tierd.daemon.progress import fraction, report_while
from tierd.sizes import format_size

if TYPE_CHECKING:
    from tierd.store import Chunk, TieredStore

log = logging.getLogger(__name__)


class FlushWatch:
    """What the shutdown flush has to do and how far it got. Build it before `close()` starts."""

    def __init__(self, store: "TieredStore") -> None:
        self.store = store
        first = store.lower[0] if store.lower else None
        self.target = first.tier.name if first is not None else ""
        self.dirty: list[Chunk] = [c for c in store.index.values()
                                   if first is not None and c.slot is not None and self.target not in c.lower]
        self.bytes = sum(c.size for c in self.dirty)
        self.uploads = self._uploads()

    def written(self) -> int:
        return sum(1 for c in self.dirty if self.target in c.lower)

    def _uploads(self) -> int:
        # queued plus in flight (the store counts the latter without exposing it otherwise)
        return len(self.store.uploads) + self.store.uploads_in_flight

    @property
    def has_work(self) -> bool:
        return bool(self.dirty) or self.uploads > 0

    def describe(self) -> str:
        parts = []
        if self.dirty:
            parts.append(f"wrote {fraction(self.written(), len(self.dirty))} DRAM-only chunks to {self.target}")
        if self.uploads:
            parts.append(f"uploads {fraction(max(0, self.uploads - self._uploads()), self.uploads)} drained")
        return "; ".join(parts)


async def close_store(store: "TieredStore", interval: float) -> None:
    """`store.close()`, logging how the flush goes every `interval` seconds while it lasts, and
    a summary once it is over."""
    watch = FlushWatch(store)
    if watch.has_work:
        what = []
        if watch.dirty:
            what.append(f"writing {len(watch.dirty)} DRAM-only chunks ({format_size(watch.bytes)}) down to {watch.target}")
        if watch.uploads:
            what.append(f"draining {watch.uploads} uploads")
        log.info("shutdown: %s", "; ".join(what))
    started = time.monotonic()
    await report_while(store.close(), interval, lambda elapsed: log.info("shutdown: %s", watch.describe()))
    if watch.has_work:
        log.info("shutdown: %s in %.1f s", watch.describe(), time.monotonic() - started)
        lost = len(watch.dirty) - watch.written()
        if lost:
            log.warning("shutdown: %d chunks were only in DRAM and are gone (not written to %s in time)",
                        lost, watch.target)
