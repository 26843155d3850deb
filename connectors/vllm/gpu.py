"""The worker's copies when vLLM's KV cache is on a CUDA device: the pinned arena, loads on a
side stream layer by layer, saves gathered straight into arena slots.

- The arena: each of the worker's connections maps the daemon's arena; `pin_arena` registers
  that mapping as pinned, device-mapped memory (`native.pinned`) as soon as it is made, so the
  CUDA kernels read and write arena slots by DMA with no staging copy. Where registration
  fails, chunks are staged through device memory instead (slower, still correct).
- Loads (`DeviceLoader`, the `LayerLoader` of device caches): `start` queues one scatter per
  layer on a side stream (`native.pipeline.LayerwiseScatter`) and returns; vLLM's
  `wait_for_layer_load` makes the compute stream wait for that layer's event, so the host never
  blocks and layer i+1 copies while layer i computes. `wait_all` (after the forward pass)
  blocks until every copy is done, before the leases are released.
- Saves (`DeviceSaves`): on the save thread, one gather of all of a request's new chunks into
  their slots, on a copy stream that first waits for the step that wrote the KV (an event
  recorded in `wait_for_save`), then one synchronize before the commit: a slot is never
  committed before its bytes are in it.

NOT RUN on the development machine (no GPU there). `tests/connectors/test_gpu_copies.py` runs
these classes wherever torch sees a CUDA device and is skipped, with the reason, elsewhere; the
layouts they copy are checked on CPU memory by `tests/connectors/test_gpu_layouts.py`.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

import native
from connectors.vllm.loader import Piece
from connectors.vllm.paged import PagedKV
from native.pinned import pin
from native.pipeline import LayerwiseScatter, StagedGather
from tierd.client import Client

log = logging.getLogger(__name__)

def pin_arena(client: Client) -> Callable[[], None] | None:
    """Register `client`'s arena mapping as pinned memory; returns the undo, or None if it could
    not be pinned (copies then stage through device memory)."""
    if client.arena is None:
        return None
    regions = [r for r in map(pin, client.arena.arrays) if r is not None]
    if len(regions) < len(client.arena.arrays):  # all or nothing: a chunk is pinned or staged
        for r in regions:
            r.unpin()
        return None

    def unpin() -> None:
        for r in regions:
            r.unpin()
    return unpin


def _host(chunk: np.ndarray) -> torch.Tensor:
    """An arena view as a tensor over the same memory (a leased view is read-only: fine to read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(chunk)


def _direct(paged: PagedKV, chunk: np.ndarray) -> bool:
    """Whether the kernels can address `chunk` (an arena view) in place: pinned, and a kernel
    (CUDA or Triton) rather than the torch reference, which cannot index host memory from the device."""
    return paged.copier.backend in ("cuda", "triton") and _host(chunk).is_pinned()


class DeviceLoader:
    """Layer-wise loads into a device cache; the interface of `loader.LayerLoader`."""

    thread = None  # no thread of its own: the copies are queued on a CUDA stream

    def __init__(self, paged: PagedKV) -> None:
        self.paged = paged
        self.pipe = LayerwiseScatter(paged.copier)
        self.waited = 0.0  # the host never waits for a layer; the compute stream does
        self.finished_at = 0.0
        self._failed = False
        self._keep: list[object] = []  # staged chunks, alive until the copies are done

    def start(self, pieces: list[Piece]) -> None:
        device = self.paged.device
        chunks: list[np.ndarray | torch.Tensor] = []
        runs = []
        for i, (src, blocks, first_token) in enumerate(pieces):
            chunks.append(src if _direct(self.paged, src) else _host(src).to(device))
            runs.append(self.paged.runs(blocks, first_token, chunk=i))
        self._keep, self._failed = chunks, False
        try:
            self.pipe.start(chunks, native.concat(*runs))
        except Exception:  # never leave the forward pass with half-queued copies unreported
            log.exception("tierd: queuing the layer-wise load failed; its blocks will be recomputed")
            self._failed = True

    def wait_layer(self, layer: int) -> None:
        if not self._failed:
            self.pipe.wait_layer(layer)

    def wait_all(self) -> bool:
        """Block until every queued copy is done; False if queuing or a copy failed."""
        try:
            self.pipe.wait_all()
        except Exception:
            log.exception("tierd: the layer-wise load failed on the device; its blocks will be recomputed")
            self._failed = True
        self.finished_at = time.perf_counter()
        self._keep = []
        return not self._failed

    def close(self) -> None:
        return


class DeviceSaves:
    """Gathers of new chunks from a device cache into arena slots, one batch per request."""

    def __init__(self, paged: PagedKV) -> None:
        self.paged = paged
        self.stream = torch.cuda.Stream(paged.device)
        self._staged: StagedGather | None = None

    @staticmethod
    def step_done() -> torch.cuda.Event:
        """Recorded on the compute stream after a step's forward pass: the KV a save reads is
        written once it has completed."""
        event = torch.cuda.Event()
        event.record()
        return event

    def gather(self, ready: torch.cuda.Event | None, chunks: Sequence[tuple[Sequence[int], np.ndarray]]) -> None:
        """Copy each (block ids, arena slot) chunk in; returns once every byte is in its slot."""
        if not chunks:
            return
        paged = self.paged
        if ready is not None:
            self.stream.wait_event(ready)
        if all(_direct(paged, slot) for _, slot in chunks):
            runs = native.concat(*(paged.runs(blocks, chunk=i) for i, (blocks, _) in enumerate(chunks)))
            with torch.cuda.stream(self.stream):
                paged.copier.gather(runs, [slot for _, slot in chunks])  # one launch, DMA into the slots
            self.stream.synchronize()
            return
        if self._staged is None:
            self._staged = StagedGather(paged.copier, paged.layout.chunk_tokens)
        self._staged.gather_stream.wait_stream(self.stream)
        done = self._staged.submit([paged.runs(blocks) for blocks, _ in chunks], [slot for _, slot in chunks])
        done.synchronize()


class StepTimer:
    """How long the device took for a step's forward pass, read once the step has completed
    (CUDA events), so the cost model learns compute time rather than launch time."""

    def __init__(self) -> None:
        self._open: torch.cuda.Event | None = None
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event, int, int]] = []

    def begin(self) -> None:
        self._open = torch.cuda.Event(enable_timing=True)
        self._open.record()

    def end(self, start: int, end: int) -> None:
        if self._open is None:
            return
        stop = torch.cuda.Event(enable_timing=True)
        stop.record()
        self._pending.append((self._open, stop, start, end))
        self._open = None

    def completed(self) -> list[tuple[int, int, float]]:
        """(start, end, seconds) of the timed steps that have completed since the last call."""
        done, still = [], []
        for first, stop, start, end in self._pending:
            if stop.query():
                done.append((start, end, first.elapsed_time(stop) / 1e3))
            else:
                still.append((first, stop, start, end))
        self._pending = still
        return done
