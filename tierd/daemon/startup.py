"""The daemon's start-up, beside serving: index rebuild with progress, the ready line, and the
work that waits until the socket is up (arena pre-faulting, tier calibration).

Why it is split this way: a client should be able to connect within a second of `tierd serve`,
whatever the arena's size. What must be right before the first request is done before the
socket appears: the lower tiers' indexes are rebuilt (a restarted daemon must not answer "miss"
for chunks it holds), and a missing bucket stops the daemon there. What only makes requests
faster or plans better comes after: the arena's pages are reserved and faulted in by a thread
(`tierd.tiers.prefault`), and the tiers are calibrated once that is done, while the store
answers with its declared costs (`tierd.cost.tiers.DECLARED`) until then.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import mmap
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierd.daemon.progress import fraction, report_while
from tierd.sizes import format_size
from tierd.cost.calibrate import calibrate_costs

if TYPE_CHECKING:
    from tierd.config import Config
    from tierd.store import TieredStore
    from tierd.tiers.prefault import Prefault

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ index rebuild


class ScanCounter:
    """Progress of an NVMe tier's `scan()`: the files it has read (`tier.scanned`) out of the
    chunk files in its directory (`total()` lists the shard directories once, which is cheap next
    to reading a header per file). A tier without the counter gets elapsed-time lines."""

    def __init__(self, tier: Any) -> None:
        self.tier = tier
        self.name: str = getattr(tier, "name", "nvme")
        self.root: Path | None = getattr(tier, "root", None)
        self.counting = hasattr(tier, "scanned")
        self._total: int | None = None

    @property
    def done(self) -> int:
        return int(getattr(self.tier, "scanned", 0))

    def total(self) -> int | None:
        if self._total is None and self.root is not None:
            from tierd.tiers.nvme.format import CHUNK_SUFFIX

            n = 0
            try:
                for shard in os.scandir(self.root):
                    if shard.is_dir(follow_symlinks=False):
                        n += sum(1 for e in os.scandir(shard.path) if e.name.endswith(CHUNK_SUFFIX))
            except OSError:
                return None
            self._total = n
        return self._total

    def describe(self, elapsed: float) -> str:
        where = f" in {self.root}" if self.root is not None else ""
        if not self.counting:
            return f"{self.name} index{where}: scanning ({elapsed:.0f} s)"
        total = self.total()
        done = fraction(self.done, total) if total else str(self.done)
        return f"{self.name} index{where}: read {done} chunk headers ({elapsed:.0f} s)"


async def start_store(store: "TieredStore", interval: float) -> None:
    """`store.start()` (lower-tier indexes rebuilt from their media), logging done/total of the
    chunk files read every `interval` seconds while it lasts."""
    counters = [ScanCounter(lower.tier) for lower in store.lower if not lower.shared]

    def report(elapsed: float) -> None:
        for counter in counters:
            log.info("%s", counter.describe(elapsed))

    await report_while(store.start(), interval, report)


# ------------------------------------------------------------------ the ready line


def ready_line(config: "Config", store: "TieredStore", seconds: float) -> str:
    """The one line that says the daemon serves, where, with which tiers of which sizes, and how
    long start-up took (the launcher waits for "serving on"). Metrics, if on, are appended by
    the caller so that they stay last."""
    tiers = [f"dram {format_size(store.arena.size)}"]
    if config.nvme > 0:
        tiers.append(f"nvme {format_size(config.nvme)} in {config.nvme_dir}")
    if config.object_url:
        cap = f"writes up to {format_size(config.object)}" if config.object else "read-only"
        tiers.append(f"object {config.object_url} ({cap})")
    events = ""
    if store.events is not None:  # the bound endpoints (a port 0 is resolved here)
        where = store.events.report()
        events = f"; kv events on {where.get('endpoint')}" + (
            f", replay on {where['replay_endpoint']}" if where.get("replay_endpoint") else "")
    return (f"tierd: serving on {config.socket} (arena {store.arena.description}; tiers: {', '.join(tiers)}{events}; "
            f"ready in {seconds:.2f} s)")


# ------------------------------------------------------------------ after the socket is up


class Calibration(Enum):
    """Where the background calibration stands (`stat` reports it)."""

    OFF = "off"            # --no-calibrate: declared costs, refined by real promotions
    PENDING = "pending"    # waiting for the arena's pre-faulting to finish
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"      # logged; declared costs stay


async def prefaulted(prefault: "Prefault") -> None:
    """Wait, without a thread, until the arena's background pre-faulting has ended."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    prefault.add_done_callback(wake)
    await finished


class BackgroundCalibration:
    """Measures the tiers once the arena is pre-faulted, while requests are served.

    Waiting for the pre-faulting keeps page faults and a competing thread out of the figures.
    Until it finishes `store.costs` holds the declared costs that `build_store` put there; the
    measured ones replace them in one assignment on the loop, so a reader sees either set,
    never a mix. `calibrate_costs` runs in a worker thread on a scratch buffer of its own
    (`_ScratchArena`) instead of a slot of the arena: the store keeps every byte of its arena,
    its used bytes never show the measurement, and its allocator (not thread-safe) is never
    touched from the worker.
    """

    def __init__(self, store: "TieredStore", enabled: bool) -> None:
        self.store = store
        self.state = Calibration.PENDING if enabled else Calibration.OFF
        self._work: asyncio.Future[Any] | None = None

    async def run(self) -> None:
        if self.state is Calibration.OFF:
            return
        await prefaulted(self.store.arena.prefault)
        if self.store.arena.prefault.error:
            self.state = Calibration.FAILED
            return
        loop = asyncio.get_running_loop()
        self.state = Calibration.RUNNING
        view = _CalibrationStore(self.store)
        self._work = loop.run_in_executor(None, functools.partial(calibrate_costs, view, loop=loop))  # type: ignore[arg-type]
        try:
            costs = await asyncio.shield(self._work)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("calibrating the tiers failed; keeping their declared costs")
            self.state = Calibration.FAILED
            return
        finally:
            if self._work.done():
                view.scratch.close()
        self.store.costs = costs
        self.state = Calibration.DONE

    async def drain(self) -> None:
        """At shutdown: let a measurement in flight finish (it may have a calibration chunk on a
        tier), so the store can close under it."""
        if self._work is not None:
            await asyncio.gather(self._work, return_exceptions=True)


class _ScratchArena:
    """Shared memory standing in for the arena while calibrating: the same kind of pages (shmem,
    as in /dev/shm), page aligned for O_DIRECT reads, touched once so no page fault is timed.
    It offers what `calibrate_costs` uses of both the arena (`view`) and its allocator
    (`alloc`, `free`), as a bump allocator over `size` bytes."""

    def __init__(self, size: int = 8 << 20) -> None:
        self.size = size
        self.used = 0
        self.mm = mmap.mmap(-1, size)  # anonymous and shared: shmem-backed
        self.mm.write(bytes(size))
        self.buf = memoryview(self.mm)

    def view(self, offset: int, nbytes: int) -> memoryview:
        return self.buf[offset : offset + nbytes]

    def alloc(self, nbytes: int) -> int | None:
        need = -(-max(nbytes, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        if self.used + need > self.size:
            return None
        offset, self.used = self.used, self.used + need
        return offset

    def free(self, offset: int, nbytes: int) -> None:
        self.used = min(self.used, offset)

    def close(self) -> None:
        self.buf.release()
        try:
            self.mm.close()
        except BufferError:  # a view is still held somewhere: the mapping goes with it
            pass


class _CalibrationStore:
    """What `calibrate_costs` reads of the store, safe to use from its worker thread: the tiers
    and tier names are the store's, the arena and allocator a scratch buffer's."""

    def __init__(self, store: "TieredStore") -> None:
        self.scratch = _ScratchArena()
        self.alloc = self.scratch
        self.arena = self.scratch
        self.lower = store.lower
        self.tier_names = store.tier_names
        self._store = store

    def __getattr__(self, name: str) -> Any:  # anything else it may read: the store's own
        return getattr(self._store, name)
