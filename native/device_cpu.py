"""The CPU implementation of the device interface: how the GPU path's own code runs on a machine
without a GPU.

Side streams are *deferred*: work issued on one is queued and runs only when the host needs
it done — a `synchronize` of the stream or of one of its events, or a wait of the current
stream (the calling thread) on one of its events. That is the most demanding schedule CUDA
allows: a copy the code forgot to wait for has simply not happened when the forward pass, a
commit or a release looks at its bytes, so a missing wait fails a byte-for-byte test here
instead of racing on a GPU. A wait between two side streams is queued like any work and,
when reached, first drives the other stream up to the event. Work runs in issue order.

The current stream is the calling thread itself (a CPU engine computes on the host): work
issued there runs at once, and a wait there blocks until the event is done.

"Pinning" registers the range in the process's table and makes it addressable in place (the
copiers reach host memory directly); `pinnable=False` refuses, so the staged path runs.
A work item that raises is a fault: the stream drops what is queued after it (as a CUDA
context is lost after a fault) and every synchronize on it raises DeviceFault.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np
import torch

from native.device import DeviceFault
from native.pinned import PinnedRange, PinnedRanges

class CpuEvent:
    def __init__(self, stream: "DeferredStream | None") -> None:
        self._stream = stream
        self.done = stream is None
        self.at = time.perf_counter() if self.done else 0.0

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream._drive(self)

    def query(self) -> bool:
        return self.done

    def elapsed(self, later: "CpuEvent") -> float:  # type: ignore[override]
        return later.at - self.at

    def _mark(self) -> None:
        self.done, self.at = True, time.perf_counter()


class DeferredStream:
    """A side stream: a queue of work run in order when the host needs it."""

    def __init__(self) -> None:
        self._queue: deque[Callable[[], object]] = deque()
        self._lock = threading.RLock()
        self.fault: BaseException | None = None

    def run(self, work: Callable[[], object]) -> None:
        with self._lock:
            if self.fault is None:
                self._queue.append(work)

    def record(self, timing: bool = False) -> CpuEvent:
        event = CpuEvent(self)
        self.run(event._mark)
        return event

    def wait(self, event: CpuEvent) -> None:  # type: ignore[override]
        if not event.done:
            self.run(event.synchronize)

    def wait_stream(self, other: "DeferredStream | HostStream") -> None:  # type: ignore[override]
        self.wait(other.record())

    def synchronize(self) -> None:
        self._drive(None)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _drive(self, until: CpuEvent | None) -> None:
        with self._lock:
            while self.fault is None and self._queue and not (until is not None and until.done):
                work = self._queue.popleft()
                try:
                    work()
                except BaseException as exc:  # noqa: BLE001 (any failure of device work is a fault)
                    self.fault = exc
                    self._queue.clear()
            if self.fault is not None:
                raise DeviceFault(f"device work failed: {self.fault!r}") from self.fault


class HostStream:
    """The current stream on CPU: the calling thread, which does its work at once."""

    def run(self, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as exc:
            raise DeviceFault(f"device work failed: {exc!r}") from exc

    def record(self, timing: bool = False) -> CpuEvent:
        return CpuEvent(None)

    def wait(self, event: CpuEvent) -> None:  # type: ignore[override]
        event.synchronize()

    def wait_stream(self, other: DeferredStream) -> None:  # type: ignore[override]
        other.synchronize()

    def synchronize(self) -> None:
        return


class CpuDevice:
    kind = "cpu"
    torch_device = torch.device("cpu")

    def __init__(self, *, pinnable: bool = True) -> None:
        self.pinnable = pinnable
        #: This device's pinned ranges (a worker shares one device among its connections).
        self.pinned = PinnedRanges()
        self._host = HostStream()

    def use(self) -> None:
        return

    def stream(self) -> DeferredStream:
        return DeferredStream()

    def current(self) -> HostStream:
        return self._host

    def empty(self, nbytes: int, stream: object) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: DeferredStream | HostStream) -> None:
        if dst.numel() * dst.element_size() != src.numel() * src.element_size():
            raise ValueError(f"copy of {src.numel() * src.element_size()} bytes into "
                             f"{dst.numel() * dst.element_size()}")
        stream.run(lambda: dst.view(-1).view(torch.uint8).copy_(src.reshape(-1).view(torch.uint8)))

    def pin(self, array: np.ndarray) -> PinnedRange | None:
        return self.pinned.pin(array.ctypes.data, array.nbytes, lambda a, n: self.pinnable, lambda a, n: None)

    def is_pinned(self, array: np.ndarray | torch.Tensor) -> bool:
        if isinstance(array, torch.Tensor):
            return array.device.type == "cpu" and self.pinned.covers(array.data_ptr(), array.numel() * array.element_size())
        return self.pinned.covers(array.ctypes.data, array.nbytes)
