"""Uploads to the shared object tier: the queue of chunks waiting to go, and the workers.

Uploads run off the request path: a commit (write-through) or an NVMe eviction (write-back)
only enqueues, and the store's upload workers drain the queue. The queue is bounded in bytes:
when the object store is slow or down it fills up, and then the *oldest* entries are dropped —
counted and logged — so memory stays bounded and the newest prefixes, the likeliest to be
reused, are the ones kept. One entry per key: enqueuing a key again replaces its entry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tierd.errors import ObjectTierUnavailable
from tierd.store.chunk import Chunk

if TYPE_CHECKING:
    from tierd.store.dram import DramRoom
    from tierd.store.index import ChunkIndex
    from tierd.store.lowers import Lower
    from tierd.store.writedown import WriteDown

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Upload:
    """A chunk to upload. `payload` holds its bytes when no local copy will be left to read them
    from (write-back of a chunk leaving NVMe); otherwise the worker reads the local copy."""

    key: bytes
    layout_id: str
    namespace: str
    size: int
    created: float
    position: int
    payload: bytes | bytearray | None = None


class UploadQueue:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.enqueued = 0
        self.dropped = 0
        self._q: OrderedDict[bytes, Upload] = OrderedDict()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._q)

    def __contains__(self, key: bytes) -> bool:
        return key in self._q

    def put(self, upload: Upload, *, front: bool = False) -> None:
        """Enqueue (at the back, or at the front for a retry); drop the oldest entries while over
        the byte bound. An entry larger than the whole bound is dropped at once."""
        old = self._q.pop(upload.key, None)
        if old is not None:
            self.bytes -= old.size
        self._q[upload.key] = upload
        if front:
            self._q.move_to_end(upload.key, last=False)
        self.bytes += upload.size
        self.enqueued += 1
        while self.bytes > self.max_bytes and self._q:
            key, gone = self._q.popitem(last=False)
            self.bytes -= gone.size
            self.dropped += 1
            log.warning("upload queue over %d bytes: dropped chunk %s (oldest); %d dropped so far",
                        self.max_bytes, key.hex(), self.dropped)
        if self._q:
            self._ready.set()

    async def get(self) -> Upload:
        while not self._q:
            self._ready.clear()
            await self._ready.wait()
        _, upload = self._q.popitem(last=False)
        self.bytes -= upload.size
        return upload

    def stats(self) -> dict[str, int]:
        return {"upload_queued": len(self._q), "upload_queue_bytes": self.bytes,
                "upload_enqueued": self.enqueued, "upload_dropped": self.dropped}


class Uploader:
    """The upload workers' work: take the oldest queued chunk, read it from its fastest local
    copy (or the bytes handed down with it), and write it to the shared tier. While the object
    store is unreachable an upload stays queued and the worker waits for the tier to let a
    request through again."""

    def __init__(self, queue: UploadQueue, index: "ChunkIndex", dram: "DramRoom", writedown: "WriteDown",
                 shared: "Lower") -> None:
        self.queue = queue
        self.index = index
        self.dram = dram
        self.writedown = writedown
        self.shared = shared
        self.in_flight = 0
        self.lost = 0  # queued chunks whose every local copy went before their upload
        self._idle = asyncio.Event()

    async def work(self) -> None:
        """One upload worker (the store runs several, supervised)."""
        while True:
            upload = await self.queue.get()
            wait = self.shared.tier.retry_after()
            if wait > 0:
                self.queue.put(upload, front=True)
                await asyncio.sleep(wait)  # backoff until the tier lets a probe through
                continue
            self.in_flight += 1
            try:
                await self.upload(upload)
            except ObjectTierUnavailable as exc:
                log.info("upload of %s deferred: %s", upload.key.hex(), exc)
                self.queue.put(upload, front=True)
                await asyncio.sleep(max(self.shared.tier.retry_after(), 0.01))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upload of chunk %s failed; dropped", upload.key.hex())
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self._idle.set()

    async def upload(self, u: Upload) -> None:
        shared = self.shared
        c = self.index.get(u.key)
        if c is not None and shared.name in c.lower:
            return
        target = c if c is not None else Chunk(u.key, u.layout_id, u.namespace, u.size, u.created, u.created,
                                               position=u.position)
        held = False
        if u.payload is not None:
            payload = memoryview(u.payload)
        elif c is not None and c.slot is not None:
            c.leases += 1  # hold the slot still while its bytes go out
            held = True
            payload = self.dram.view(c)
        elif c is not None and c.lower:
            local = next(l for l in self.index.lowers if l.name in c.lower)
            buf = bytearray(c.size)
            if local.shared or await local.tier.read_into(c.key, memoryview(buf), layout_id=c.layout_id,
                                                          payload_len=c.size) is None:
                self.lost += 1
                return
            payload = memoryview(buf)
        else:
            self.lost += 1
            return
        try:
            if target.key in self.index and self.index[target.key] is not target:
                return  # replaced meanwhile: its own upload entry covers it
            ok = await self.writedown.write(target, shared, payload, raise_unavailable=True)
        finally:
            if held:
                assert c is not None
                c.leases -= 1
        if ok and target.key not in self.index:
            self.index[target.key] = target  # a handed-down chunk: the object is its only copy now

    async def drain(self, timeout: float) -> None:
        """At shutdown: let the uploads in flight finish and give the queued ones up to
        `timeout` seconds to go out."""
        deadline = time.monotonic() + timeout
        if self.in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d uploads still in flight at shutdown", self.in_flight)
        while self.queue and time.monotonic() < deadline:
            if self.shared.tier.retry_after() > 0:
                log.warning("object store unreachable at shutdown: %d queued uploads not sent", len(self.queue))
                return
            u = await self.queue.get()
            try:
                await asyncio.wait_for(self.upload(u), max(0.01, deadline - time.monotonic()))
            except (ObjectTierUnavailable, asyncio.TimeoutError):
                log.warning("upload of %s at shutdown failed; not sent", u.key.hex())
        if self.queue:
            log.warning("%d queued uploads not sent at shutdown", len(self.queue))
