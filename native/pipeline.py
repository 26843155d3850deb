"""Pipelined CUDA transfers: copies on their own streams, ordered by events, so they overlap
the forward pass instead of taking turns with it.

- `LayerwiseScatter` (loads): one scatter launch per layer on a side stream, reading the
  pinned arena directly, with an event per layer. `wait_layer(i)` makes the *compute stream*
  wait for layer i's event: the host never blocks, and layer i+1 is still copying while
  layer i computes (vLLM's `wait_for_layer_load`).
- `StagedGather` (saves): chunks are gathered on the device into two staging buffers in turn,
  and each staged chunk goes to its arena slot with one large device->host copy on a copy
  stream, so gathering chunk i+1 overlaps the PCIe transfer of chunk i; decode keeps running
  on the compute stream. (Where the arena is registered, a gather can also write the slot
  directly: `CudaCopier.gather` with the slot as the chunk; which is faster depends on the
  GPU, and `bench/gather_scatter.py` measures both.)

NOT RUN on the development machine (no GPU there). These are the code paths the GPU tests
(tests/native/test_cuda.py) exercise wherever torch sees a CUDA device.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from native.backend import Copier
from native.chunks import Buffer


def _tensor(buf: Buffer) -> torch.Tensor:
    return torch.from_numpy(buf.reshape(-1).view(np.uint8)) if isinstance(buf, np.ndarray) else buf.reshape(-1).view(torch.uint8)


class LayerwiseScatter:
    """Scatter a step's chunks into the device cache layer by layer on a side stream.

    `copier` is any copier of a device cache (the CUDA kernels, or the torch reference on the
    device) whose copies go to the current stream; this class makes that its own stream."""

    def __init__(self, copier: Copier) -> None:
        self.copier = copier
        self.stream = torch.cuda.Stream(copier.cache.device)
        self.num_layers = copier.cache.num_layers
        self._events: list[torch.cuda.Event] = []

    def start(self, chunks: Sequence[Buffer], runs: np.ndarray) -> None:
        """Queue every layer's scatter; returns at once. The chunks must stay leased (and their
        memory mapped) until `wait_all` returns."""
        # Blocks handed to this step were allocated and maybe zeroed on the compute stream.
        self.stream.wait_stream(torch.cuda.current_stream(self.copier.cache.device))
        self._events = []
        with torch.cuda.stream(self.stream):
            for layer in range(self.num_layers):
                self.copier.scatter(chunks, runs, layers=range(layer, layer + 1))
                event = torch.cuda.Event()
                event.record(self.stream)
                self._events.append(event)

    def wait_layer(self, layer: int) -> None:
        """Make the current (compute) stream wait until `layer` is in place; the host does not block."""
        if self._events:
            torch.cuda.current_stream(self.copier.cache.device).wait_event(self._events[layer])

    def wait_all(self) -> None:
        """Block the host until every layer is in place (before the leases are released)."""
        if self._events:
            self._events[-1].synchronize()
            self._events = []


class StagedGather:
    """Gather chunks through two device staging buffers into (pinned) arena slots."""

    def __init__(self, copier: Copier, chunk_tokens: int) -> None:
        cache = copier.cache
        device = cache.device
        self.gather_stream = torch.cuda.Stream(device)
        self.copy_stream = torch.cuda.Stream(device)
        self.copier = copier
        nbytes = cache.num_layers * 2 * chunk_tokens * cache.chunk_row * cache.itemsize
        self._staging = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(2)]
        self._free: list[torch.cuda.Event | None] = [None, None]  # staging buffer i's last D2H copy

    def submit(self, runs: Sequence[np.ndarray], slots: Sequence[Buffer]) -> torch.cuda.Event:
        """Gather chunk i (its runs in `runs[i]`, chunk column 0) into `slots[i]`. Returns an event
        recorded after the last copy: the blocks must not be reused, nor the slots committed,
        before it has completed (`event.synchronize()` on the saver thread)."""
        if len(runs) != len(slots):
            raise ValueError(f"{len(runs)} run lists for {len(slots)} slots")
        device = self.copier.cache.device
        self.gather_stream.wait_stream(torch.cuda.current_stream(device))  # this step's KV is written
        done = torch.cuda.Event()
        for i, (chunk_runs, slot) in enumerate(zip(runs, slots)):
            k = i % 2
            staging = self._staging[k]
            if (free := self._free[k]) is not None:
                self.gather_stream.wait_event(free)  # its previous chunk has left for the host
            with torch.cuda.stream(self.gather_stream):
                self.copier.gather(chunk_runs, [staging])
            staged = torch.cuda.Event()
            staged.record(self.gather_stream)
            self.copy_stream.wait_event(staged)
            with torch.cuda.stream(self.copy_stream):
                _tensor(slot).copy_(staging, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
            self._free[k] = done
        return done
