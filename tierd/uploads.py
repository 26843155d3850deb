"""The queue of chunks waiting to be uploaded to the shared object tier.

Uploads run off the request path: a commit (write-through) or an NVMe eviction (write-back)
only enqueues, and the store's upload workers drain the queue. The queue is bounded in bytes:
when the object store is slow or down it fills up, and then the *oldest* entries are dropped —
counted and logged — so memory stays bounded and the newest prefixes, the likeliest to be
reused, are the ones kept. One entry per key: enqueuing a key again replaces its entry.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

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
