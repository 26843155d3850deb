"""Pipelined device transfers: copies on their own streams, ordered by events, so they overlap
the forward pass instead of taking turns with it. Written against the device interface
(`native.device`), so the same code runs on a GPU (CUDA streams) and, in the tests, on the CPU
implementation (deferred streams that run work only when the host needs it).

- `LayerwiseScatter` (loads): the batch is checked and described once (`copier.prepare`), then
  one launch and one event per layer on a side stream. `wait_layer(i)` makes the *current*
  stream wait for layer i's event: on a GPU the host never blocks, and layer i+1 is still
  copying while layer i computes (vLLM's `wait_for_layer_load`). `layerwise=False` makes the
  current stream wait for the last layer at once, for a forward pass that will not call the
  per-layer waits (a replayed CUDA graph does not run Python).
- `StagedGather` (saves into memory the device cannot address): chunks are gathered on the
  device into two staging buffers in turn, and each staged chunk goes to its slot with one
  large copy on a copy stream, so gathering chunk i+1 overlaps the transfer of chunk i.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from native.backend import Copier
from native.chunks import Buffer, as_bytes
from native.device import Device, Event


class LayerwiseScatter:
    """Scatter a step's chunks into the device cache layer by layer on a side stream."""

    def __init__(self, copier: Copier, device: Device, *, layerwise: bool = True) -> None:
        self.copier = copier
        self.device = device
        self.layerwise = layerwise
        self.stream = device.stream()
        self.num_layers = copier.cache.num_layers
        self._events: list[Event] = []

    def start(self, chunks: Sequence[Buffer], runs: np.ndarray) -> None:
        """Queue every layer's scatter; returns at once. The chunks must stay leased (and their
        memory mapped) until `wait_all` returns. Bad chunks or runs raise before anything is queued."""
        prepared = self.copier.prepare(runs, chunks, gather=False)
        # Blocks handed to this step were allocated and maybe zeroed on the compute stream.
        self.stream.wait_stream(self.device.current())
        self._events = []
        for layer in range(self.num_layers):
            self.stream.run(functools.partial(self.copier.launch, prepared, range(layer, layer + 1)))
            self._events.append(self.stream.record())
        if not self.layerwise:
            self.device.current().wait(self._events[-1])

    def wait_layer(self, layer: int) -> None:
        """Make the current (compute) stream wait until `layer` is in place; on a GPU the host
        does not block."""
        if self._events and self.layerwise:
            self.device.current().wait(self._events[layer])

    def wait_all(self) -> None:
        """Block the host until every layer is in place (before the leases are released);
        DeviceFault if a copy failed."""
        if self._events:
            last, self._events = self._events[-1], []
            last.synchronize()


class StagedGather:
    """Gather chunks through two device staging buffers into slots the device cannot address."""

    def __init__(self, copier: Copier, device: Device, chunk_tokens: int) -> None:
        cache = copier.cache
        self.device = device
        self.gather_stream = device.stream()
        self.copy_stream = device.stream()
        self.copier = copier
        # kv_factor, not 2: an MLA chunk holds one latent row per token and layer.
        nbytes = cache.num_layers * cache.kv_factor * chunk_tokens * cache.chunk_row * cache.itemsize
        self._staging = [device.empty(nbytes, self.gather_stream) for _ in range(2)]
        self._free: list[Event | None] = [None, None]  # staging buffer i's last copy out

    @property
    def chunk_bytes(self) -> int:
        return self._staging[0].numel()

    def submit(self, runs: Sequence[np.ndarray], slots: Sequence[Buffer], after: Event) -> Event:
        """Gather chunk i (its runs in `runs[i]`, chunk column 0) into `slots[i]`, once `after`
        (recorded where the KV was written: the engine's compute stream) has completed. Returns an
        event recorded after the last copy: the blocks must not be reused, nor the slots
        committed, before it has completed (`event.synchronize()` on the saver thread). `after`
        is explicit because the caller's thread may not be the engine's: its current stream is
        not the one that wrote the KV."""
        if len(runs) != len(slots):
            raise ValueError(f"{len(runs)} run lists for {len(slots)} slots")
        out = [as_bytes(slot) for slot in slots]
        for i, o in enumerate(out):
            if o.numel() != self.chunk_bytes:
                raise ValueError(f"slot {i} has {o.numel()} bytes, a chunk {self.chunk_bytes}")
        prepared = [self.copier.prepare(r, [self._staging[i % 2]], gather=True) for i, r in enumerate(runs)]
        self.gather_stream.wait(after)  # this step's KV is written
        done = self.copy_stream.record()
        for i, (p, slot) in enumerate(zip(prepared, out)):
            k = i % 2
            if (free := self._free[k]) is not None:
                self.gather_stream.wait(free)  # its previous chunk has left for the slot
            self.gather_stream.run(functools.partial(self.copier.launch, p))
            self.copy_stream.wait(self.gather_stream.record())
            self.device.copy(slot, self._staging[k], self.copy_stream)
            done = self._free[k] = self.copy_stream.record()
        return done
