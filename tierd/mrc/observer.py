"""What the daemon learns from its own access stream: the online hit-rate curve, and an
optional Parquet access trace for offline analysis (`tierd mrc --trace`).

The store calls the observer after every lookup; the observer only appends to a bounded
queue (O(1), nothing on the request path waits for it), and a background task feeds the
queued lookups to a fixed-size SHARDS estimator (bounded memory) and the trace recorder. If
lookups arrive faster than the task drains them, whole lookups are dropped from the estimate
and counted, so the curve stays an unbiased sample of requests and the daemon never slows down.

Tiers are stacked: DRAM demotes its least recently used chunks to NVMe, so DRAM + NVMe behave
like one LRU of their summed capacity, and each tier's predicted hit ratio is the curve's
rise between the cumulative capacities above and below it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tierd.mrc.advice import recommend_blocks
from tierd.mrc.curve import default_grid
from tierd.mrc.shards import ShardsMRC
from tierd.supervise import Supervised, supervise

if TYPE_CHECKING:
    from tierd.store import TieredStore
    from tierd.mrc.trace_recorder import TraceRecorder

log = logging.getLogger(__name__)


class AccessObserver:
    def __init__(self, store: "TieredStore", *, sample_rate: float = 0.01, max_keys: int = 8192,
                 queue_limit: int = 4096, recorder: "TraceRecorder | None" = None) -> None:
        self.store = store
        # Fixed size (memory bounded by max_keys) starting at a low rate (work per lookup bounded:
        # at 0.01 a 512-chunk lookup samples ~5 keys); the rate only falls as more keys are seen.
        self.mrc = ShardsMRC.fixed_size(max_keys, initial_rate=sample_rate)
        self.recorder = recorder
        self.requests = 0
        self.dropped = 0
        self._queue: collections.deque[tuple[Sequence[bytes], bytes]] = collections.deque()
        self._limit = queue_limit
        self._ready = asyncio.Event()
        self._task: Supervised | None = None

    def __call__(self, keys: Sequence[bytes], codes: bytes, prefix: int) -> None:
        """The store's lookup hook: enqueue and return."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        self._queue.append((keys, codes))
        self._ready.set()

    def start(self) -> None:
        self.store.observers.append(self)
        # Supervised: a drain that dies of a bug is logged and restarted, never silently gone
        # (the curve would freeze while lookups keep filling the queue up to its bound).
        self._task = supervise("tierd-access-observer", self._drain_loop)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task.task, return_exceptions=True)
        try:
            self.drain()
        except Exception:  # the shutdown that called this must go on to write the store down
            log.exception("the access observer's last drain failed; its queued lookups are dropped")
        if self.recorder is not None:
            self.recorder.close()

    def alive(self) -> bool:
        """Whether the drain task is running (False before `start` or once it was lost)."""
        return self._task is not None and self._task.alive()

    async def _drain_loop(self) -> None:
        while True:
            if not self._queue:  # what a crashed drain left behind is drained first after its restart
                self._ready.clear()
                await self._ready.wait()
            self.drain()

    def drain(self) -> None:
        names = self.store.tier_names
        while self._queue:
            keys, codes = self._queue.popleft()
            self.requests += 1
            if keys:
                # Chunk keys are blake2b outputs: their first four bytes are already a uniform hash.
                hashes = np.frombuffer(b"".join(keys), dtype="<u4")[::4]
                self.mrc.access_request_hashed(keys, hashes, 1)
            if self.recorder is not None:
                index = self.store.index
                self.recorder.record(
                    "lookup", "", list(keys), [c.size if (c := index.get(k)) else 0 for k in keys],
                    [names[c] if c < len(names) else None for c in codes],
                )

    def report(self, grid: Sequence[int] | None = None, gain_per_gib: float = 0.001) -> dict[str, Any]:
        """Curves and per-tier predictions in the shape `tierd mrc` prints."""
        self.drain()
        stat = self.store.stat()
        chunk_bytes = self._typical_chunk_bytes()
        # A tier holds capacity // (what one chunk really occupies there: aligned slot, file header).
        per_chunk = [self.store.alloc.rounded(chunk_bytes)] + [l.tier.stored_bytes(chunk_bytes) for l in self.store.lower]
        tiers, cumulative, blocks = [], 0, 0
        for t, occupied in zip(stat["tiers"], per_chunk):
            cumulative += t["capacity_bytes"]
            blocks += t["capacity_bytes"] // occupied
            tiers.append({"name": t["name"], "bytes": t["capacity_bytes"], "cumulative_bytes": cumulative,
                          "cumulative_blocks": blocks, "measured_hit_ratio": t["hit_ratio"]})
        top = max([t["cumulative_blocks"] for t in tiers] + [self.mrc.tracked_keys * 2, 16])
        grid = list(grid) if grid else default_grid(int(top * 2))
        grid = sorted(set(grid) | {t["cumulative_blocks"] for t in tiers if t["cumulative_blocks"] > 0})
        shards = self.mrc.curve(grid)
        prefix = self.mrc.prefix_curve(grid)
        at = dict(zip(grid, (h for _, h in shards)))
        pat = dict(zip(grid, (h for _, h in prefix)))
        below = 0.0
        for t in tiers:
            c = t["cumulative_blocks"]
            t["hit_ratio"], t["prefix_hit_ratio"] = at.get(c, 0.0), pat.get(c, 0.0)
            t["predicted_tier_hit_ratio"] = t["hit_ratio"] - below
            below = t["hit_ratio"]
        rec = recommend_blocks(shards, chunk_bytes, gain_per_gib) if self.mrc.references else None
        return {
            "source": "live", "grid": grid, "shards": shards, "prefix_shards": prefix, "block_bytes": chunk_bytes,
            "sample_rate": self.mrc.rate, "requests": self.requests, "references": self.mrc.references,
            "sampled_references": self.mrc.sampled_references, "dropped_requests": self.dropped,
            "distinct": None, "max_hit_ratio": max([h for _, h in shards] + [0.0]), "mae_vs_exact": {},
            "tiers": tiers, "recommendation": rec,
        }

    def _typical_chunk_bytes(self) -> int:
        sizes = collections.Counter(layout.chunk_bytes for layout in self.store.layouts.values())
        return sizes.most_common(1)[0][0] if sizes else 1 << 20
