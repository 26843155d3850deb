"""The few device operations the copy pipelines use, behind one small interface with a CUDA
implementation (`native.device_cuda`) and a CPU one (`native.device_cpu`).

Why an interface: the worker's device path (streams, events, pinning, staging buffers) is the
code a first GPU run would break on, and the development machine has no GPU. With the CPU
implementation the *same* pipeline, worker and connector code runs here, byte for byte
against the reference; only the lines inside `device_cuda` that call CUDA stay unexecuted.

The model is CUDA's: work is issued on a stream and runs in issue order; an event marks a
point in a stream; a stream can wait for an event of another; the host blocks only in
`synchronize`. The *current* stream is the engine's compute stream (on CPU: the calling
thread itself, so a wait there blocks until the bytes are in place, as the forward pass on a
CPU engine needs). An asynchronous fault is raised as `DeviceFault` at the first point the host
synchronizes with the work that faulted, never later as a crash elsewhere.
"""
from __future__ import annotations

import os
from typing import Callable, Protocol

import numpy as np
import torch

from tierd.errors import ConfigError, TierdError


class DeviceFault(TierdError):
    """Device work failed asynchronously (an illegal address, a failed copy): every byte it was
    to move is suspect. On CUDA the context is unusable afterwards; the caller stops using it."""


class Event(Protocol):
    def synchronize(self) -> None:
        """Block the host until the event's work is done; DeviceFault if that work faulted."""

    def query(self) -> bool:
        """Whether the event's work is done (never blocks)."""

    def elapsed(self, later: "Event") -> float:
        """Seconds between this event and `later` (both recorded with timing, both done)."""


class Stream(Protocol):
    def run(self, work: Callable[[], object]) -> None:
        """Issue `work`'s device operations on this stream, after everything issued before.
        `work` is a host function that issues copies or launches (on CUDA it is called at once
        with this stream current; on CPU it *is* the work, run when the stream gets to it)."""

    def record(self, timing: bool = False) -> Event:
        """An event marking everything issued on this stream so far."""

    def wait(self, event: Event) -> None:
        """Work issued on this stream from now on starts after `event` (the host does not block)."""

    def wait_stream(self, other: "Stream") -> None:
        """Work issued from now on starts after everything issued on `other` so far."""

    def synchronize(self) -> None:
        """Block the host until everything issued on this stream is done; DeviceFault on a fault."""


class Pin(Protocol):
    def unpin(self) -> None: ...


class Device(Protocol):
    """One device's streams, staging memory and pinning."""

    kind: str  # "cuda" or "cpu"
    torch_device: torch.device

    def use(self) -> None:
        """Make this device the calling thread's current one (before any device call on a thread
        the engine did not set up, e.g. the connector's saver)."""

    def stream(self) -> Stream:
        """A new side stream (copies that overlap the compute stream)."""

    def current(self) -> Stream:
        """The calling thread's current (compute) stream."""

    def empty(self, nbytes: int, stream: Stream) -> torch.Tensor:
        """A staging buffer of `nbytes` bytes in device memory, for use on `stream`."""

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: Stream) -> None:
        """Issue dst <- src (same byte count; host or device memory either side) on `stream`."""

    def pin(self, array: np.ndarray) -> Pin | None:
        """Make `array` (an arena mapping) addressable by the device's copies; None if it cannot
        be (copies then stage through device memory). Reference-counted per process."""

    def is_pinned(self, array: np.ndarray | torch.Tensor) -> bool:
        """Whether the device's copies may address `array` in place."""


#: `TIERD_CPU_STREAMS`: run a CPU cache's copies through the device-stream path of GPU caches
#: (`connectors/vllm/gpu.py`) on the CPU implementation, with the arena "pinned" (copies address
#: it in place) or "staged" (copies go through staging buffers). For tests and debugging: it is
#: how the GPU path's code runs on a machine without a GPU.
CPU_STREAMS = ("pinned", "staged")


def cpu_streams() -> str | None:
    """The `TIERD_CPU_STREAMS` mode, or None when unset/off; ConfigError on anything else."""
    value = os.environ.get("TIERD_CPU_STREAMS", "").strip().lower()
    if value in ("", "0", "off", "no", "false"):
        return None
    if value not in CPU_STREAMS:
        raise ConfigError(f"TIERD_CPU_STREAMS={value!r}: use {' or '.join(CPU_STREAMS)} (or leave it unset)")
    return value


def for_device(device: torch.device, *, pinnable: bool = True) -> Device:
    """The implementation for a cache on `device`: CUDA for a CUDA device, else the CPU one.
    `pinnable=False` (CPU only) refuses every pin, so the staged path runs (tests)."""
    if device.type == "cuda":
        from native.device_cuda import CudaDevice

        return CudaDevice(device)
    from native.device_cpu import CpuDevice

    return CpuDevice(pinnable=pinnable)
