"""The worker's copies through device streams: loads on a side stream layer by layer, saves
gathered straight into arena slots registered as pinned memory. What a CUDA cache uses; on a
CPU cache the same classes run on the CPU implementation of the device interface
(`native.device_cpu`) when `TIERD_CPU_STREAMS` asks for it, which is how every line here is
executed on a machine without a GPU (tests/connectors/test_gpu_copies.py).

- The arena: each of the worker's connections maps the daemon's arena once per process (the
  two connections share the mapping, `tierd.client.arena`), and `pin_arena` registers each
  region with the device once per process (`native.pinned` counts the holders), so the kernels
  read and write arena slots in place. Where registration fails, chunks are staged through
  device memory instead (slower, still correct).
- Loads (`DeviceLoader`, the `LayerLoader` of the stream path): `start` checks the batch once
  and queues one scatter launch and one event per layer (`native.pipeline.LayerwiseScatter`)
  and returns; vLLM's `wait_for_layer_load` makes the compute stream wait for that layer's
  event, so the host never blocks and layer i+1 copies while layer i computes. `wait_all`
  (after the forward pass) blocks until every copy is done, before the leases are released.
  `layerwise=False` (an engine that may replay full CUDA graphs, which skip the per-layer
  waits) makes the compute stream wait for the whole load before the forward pass.
- Saves (`DeviceSaves`): on the save thread, one gather of all of a request's new chunks into
  their slots, on a copy stream that first waits for the step that wrote the KV (an event
  recorded in `wait_for_save`), then one synchronize before the commit: a slot is never
  committed before its bytes are in it.
- A fault of a copy (`DeviceFault`, raised where the host waits for it or at the launch) fails
  that load or save; `faulted` tells the worker to stop using the device path. An asynchronous
  fault is sticky for the CUDA context, so the engine's next CUDA call fails as well: what this
  guarantees is that no faulted copy is served and the cause is logged, not that the engine lives.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np
import torch

import native
from connectors.vllm.loader import Piece
from connectors.vllm.paged import PagedKV
from native.device import Device, DeviceFault, Event
from native.chunks import as_bytes
from native.pipeline import LayerwiseScatter, StagedGather
from tierd.client import Client

log = logging.getLogger(__name__)


def pin_arena(device: Device) -> Callable[[Client], Callable[[], None] | None]:
    """The link's set-up for `device`: register a new connection's arena regions (a region the
    process already registered is only counted again); returns the undo, or None if a region
    could not be pinned (copies then stage through device memory)."""

    def on_connect(client: Client) -> Callable[[], None] | None:
        if client.arena is None:
            return None
        device.use()  # connections are made on the saver thread too, which starts on device 0
        pins = [device.pin(a) for a in client.arena.arrays]
        held = [p for p in pins if p is not None]
        if len(held) < len(pins):  # all or nothing: a chunk is pinned or staged
            for p in held:
                p.unpin()
            return None

        def unpin() -> None:
            device.use()
            for p in held:
                p.unpin()
        return unpin

    return on_connect


def _direct(paged: PagedKV, device: Device, chunk: np.ndarray) -> bool:
    """Whether the copier can address `chunk` (an arena view) in place: pinned, and a copier
    that reaches host memory (the CUDA kernels do; the torch reference on a GPU does not)."""
    return bool(paged.copier.reaches_host) and device.is_pinned(chunk)  # type: ignore[union-attr]


class DeviceLoader:
    """Layer-wise loads through a device stream; the interface of `loader.LayerLoader`."""

    thread = None  # no thread of its own: the copies are queued on a stream

    def __init__(self, paged: PagedKV, device: Device, *, layerwise: bool = True) -> None:
        self.paged = paged
        self.device = device
        self.pipe = LayerwiseScatter(paged.copier, device, layerwise=layerwise)  # type: ignore[arg-type]
        self.waited = 0.0  # the host never waits for a layer; the compute stream does
        self.finished_at = 0.0
        self.faulted = False  # a copy faulted: the device path must not be used again
        self._failed = False
        self._keep: list[object] = []  # staged chunks, alive until the copies are done

    def start(self, pieces: list[Piece]) -> None:
        chunk_bytes = self.paged.layout.chunk_bytes
        chunks: list[np.ndarray | torch.Tensor] = []
        runs = []
        self._failed = False
        try:
            for i, (src, blocks, first_token) in enumerate(pieces):
                if _direct(self.paged, self.device, src):
                    chunks.append(src)
                else:  # staged: one copy into device memory, on the load stream, before the scatter
                    staged = self.device.empty(chunk_bytes, self.pipe.stream)
                    self.device.copy(staged, as_bytes(src), self.pipe.stream)
                    chunks.append(staged)
                runs.append(self.paged.runs(blocks, first_token, chunk=i))
            self._keep = chunks
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
            if self._failed:
                self.pipe.stream.synchronize()  # staging copies queued before the failure
        except DeviceFault:
            log.exception("tierd: the layer-wise load faulted on the device; its blocks will be recomputed and "
                          "tierd stops copying on this device")
            self._failed = self.faulted = True
        self.finished_at = time.perf_counter()
        self._keep = []
        return not self._failed

    def close(self) -> None:
        return


class DeviceSaves:
    """Gathers of new chunks from the cache into arena slots, one batch per request."""

    def __init__(self, paged: PagedKV, device: Device) -> None:
        self.paged = paged
        self.device = device
        self.stream = device.stream()
        self.faulted = False
        self._staged: StagedGather | None = None

    def step_done(self) -> Event:
        """Recorded on the compute stream after a step's forward pass: the KV a save reads is
        written once it has completed."""
        return self.device.current().record()

    def gather(self, ready: Event | None, chunks: Sequence[tuple[Sequence[int], np.ndarray]]) -> None:
        """Copy each (block ids, arena slot) chunk in, after `ready` (`step_done` of the step that
        wrote them); returns once every byte is in its slot. DeviceFault if a copy faulted (the
        caller must not commit the slots)."""
        if not chunks:
            return
        if ready is None:  # nothing would order the copies after the step that wrote the KV
            raise ValueError("a device save needs the event of the step that wrote its KV (step_done)")
        paged = self.paged
        self.device.use()
        self.stream.wait(ready)
        try:
            if all(_direct(paged, self.device, slot) for _, slot in chunks):
                runs = native.concat(*(paged.runs(blocks, chunk=i) for i, (blocks, _) in enumerate(chunks)))
                prepared = paged.copier.prepare(runs, [slot for _, slot in chunks], gather=True)  # type: ignore[union-attr]
                self.stream.run(lambda: paged.copier.launch(prepared))  # type: ignore[union-attr]
                self.stream.synchronize()  # one launch, straight into the slots
                return
            if self._staged is None:
                self._staged = StagedGather(paged.copier, self.device, paged.layout.chunk_tokens)  # type: ignore[arg-type]
            done = self._staged.submit([paged.runs(blocks) for blocks, _ in chunks], [slot for _, slot in chunks],
                                       after=self.stream.record())
            done.synchronize()
        except DeviceFault:
            self.faulted = True
            raise


class StepTimer:
    """How long the device took for a step's forward pass, read once the step has completed
    (timed events on the compute stream), so the cost model learns compute time rather than
    launch time."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._open: Event | None = None
        self._pending: list[tuple[Event, Event, int, int]] = []

    def begin(self) -> None:
        self._open = self.device.current().record(timing=True)

    def cancel(self) -> None:
        """Drop the open step: it waited for loads on the compute stream, which are not prefill."""
        self._open = None

    def end(self, start: int, end: int) -> None:
        if self._open is None:
            return
        self._pending.append((self._open, self.device.current().record(timing=True), start, end))
        self._open = None

    def completed(self) -> list[tuple[int, int, float]]:
        """(start, end, seconds) of the timed steps that have completed since the last call."""
        done, still = [], []
        for first, stop, start, end in self._pending:
            if stop.query():
                done.append((start, end, first.elapsed(stop)))
            else:
                still.append((first, stop, start, end))
        self._pending = still
        return done
