"""The replay buffer: the latest published batches, bounded in bytes, for subscribers that
missed some.

Written by the publisher thread (`append`), read by the replay thread (`since`); a lock keeps
the two apart, and `since` copies references out under it, so a long replay never holds up
publishing. Invariant: the batches held have consecutive sequence numbers, and their payloads
together never exceed `max_bytes` (the oldest go first; a single batch larger than the whole
buffer is not kept).
"""
from __future__ import annotations

import itertools
import threading
from collections import deque


class ReplayBuffer:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: deque[tuple[int, bytes]] = deque()
        self._lock = threading.Lock()

    def append(self, seq: int, payload: bytes) -> None:
        with self._lock:
            if self._items and seq != self._items[-1][0] + 1:
                self._items.clear()  # a gap (cannot happen with one publisher): keep the run consecutive
                self.nbytes = 0
            self._items.append((seq, payload))
            self.nbytes += len(payload)
            while self.nbytes > self.max_bytes:
                self.nbytes -= len(self._items.popleft()[1])

    def since(self, start: int) -> list[tuple[int, bytes]]:
        """The batches held with sequence numbers >= `start`, oldest first."""
        with self._lock:
            if not self._items:
                return []
            skip = max(0, start - self._items[0][0])
            return list(itertools.islice(self._items, skip, None))

    @property
    def first_seq(self) -> int | None:
        with self._lock:
            return self._items[0][0] if self._items else None

    def __len__(self) -> int:
        return len(self._items)
