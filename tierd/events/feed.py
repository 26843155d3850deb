"""The store's side of KV events: where its event points hand over what came and went.

Who calls it: the store, on its loop, at the points where a copy of a chunk appears or goes —
`ChunkIndex.add_lower_copy` / `forget_lower_copy` (NVMe and object copies), `DramRoom.place` /
`drop` (DRAM copies), and `TieredStore.start` / `close` (all cleared). Those are the only places
that record copies coming and going, so every store, demotion, promotion, eviction and upload
passes one of them exactly once, and no other code calls the feed.

What it guarantees: a call never blocks and never waits on a subscriber. It puts one small tuple
on a `SimpleQueue` (no encoding on the loop); one consumer (`tierd.events.publisher`) takes them
in order on its own thread. If the consumer falls behind by `limit` records, new records are
dropped and counted (`dropped`, in `stat`) rather than letting memory grow; a subscriber's view
of this node may then be stale until the copies concerned change again. (A million records is
seconds of work for the publisher: only a stalled one gets there.)

Records (plain tuples, read by the publisher only):

    (STORED, tier, key, parent key | None, kept token ids (`wire.keep_tokens`) | None, layout id)
    (REMOVED, tier, key)
    (CLEARED,)
"""
from __future__ import annotations

import logging
import queue
from array import array
from typing import Any, Callable

log = logging.getLogger(__name__)

STORED, REMOVED, CLEARED = 0, 1, 2
#: Put on the queue by `close`: the consumer ends after the records before it.
STOP: tuple[Any, ...] = ()

Record = tuple[Any, ...]


class EventFeed:
    """Records of copies stored and removed, per tier, in the order the store made them."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.queue: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self.limit = limit
        #: Records handed over, and records dropped because the consumer was `limit` behind.
        self.recorded = 0
        self.dropped = 0
        self.closed = False
        #: Whoever consumes the records (`tierd.events.publisher.ZmqPublisher`), for `report`.
        self.publisher: Any = None
        self._on_close: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ the store's event points

    def stored(self, tier: str, key: bytes, layout_id: str, parent: bytes | None, tokens: array | None) -> None:
        """A copy of chunk `key` is now on `tier`. `parent` and `tokens` (kept token ids, `wire.keep_tokens`) are
        what its put said, None where not known."""
        self._put((STORED, tier, key, parent, tokens, layout_id))

    def removed(self, tier: str, key: bytes) -> None:
        """The copy of chunk `key` on `tier` is gone."""
        self._put((REMOVED, tier, key))

    def cleared(self) -> None:
        """Forget everything this node said before (at start: not yet known; at close: gone)."""
        self._put((CLEARED,))

    def _put(self, record: Record) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.limit:
            if not self.dropped:
                log.warning("kv events: the publisher is %d events behind; dropping events (counted in stat)",
                            self.limit)
            self.dropped += 1
            return
        self.queue.put(record)
        self.recorded += 1

    # ------------------------------------------------------------------ the consumer's side

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run `fn` after `close()` queued its STOP (the publisher: send the rest, then stop)."""
        self._on_close.append(fn)

    def close(self) -> None:
        """No more records: the consumer ends after the ones queued. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(STOP)
        for fn in self._on_close:
            fn()

    def stats(self) -> dict[str, int]:
        return {"recorded": self.recorded, "dropped": self.dropped, "queued": self.queue.qsize()}

    def report(self) -> dict[str, Any]:
        """For `stat`: the publisher's figures (endpoints, batches, replay buffer) with the feed's."""
        return self.publisher.stats() if self.publisher is not None else self.stats()
