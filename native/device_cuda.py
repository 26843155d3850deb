"""The CUDA implementation of the device interface: torch's streams and events, the arena
registered with `cudaHostRegister`, staging buffers from torch's caching allocator.

These are the only lines of the device path that the development machine cannot run (no GPU);
everything that calls them (`native.pipeline`, `connectors/vllm/gpu.py`, the worker) runs
there through `native.device_cpu`. `tests/native/test_device_cuda.py` runs this file wherever
torch sees a GPU.

Faults: a kernel that faults makes every later CUDA call of the context fail; torch raises it
as a RuntimeError from the first synchronize. Each synchronize here turns that into
DeviceFault, at the point the pipeline waits for its own copies, so the worker can treat the
batch as not loaded and stop using the device path instead of the engine dying somewhere else.

Registration: the kernels address a registered range by its *host* address, which is what
unified addressing gives on 64-bit Linux (`cudaDevAttrCanUseHostPointerForRegisteredMem`). That
is checked, not assumed: `cudaHostGetDevicePointer` must return the host address, else the
range is unregistered and copies stage through device memory.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from typing import Callable

import numpy as np
import torch

from native.device import DeviceFault
from native.pinned import PinnedRange, PinnedRanges

log = logging.getLogger(__name__)

#: cudaHostRegisterPortable | cudaHostRegisterMapped: pinned for every context, device-addressable.
REGISTER_FLAGS = 0x01 | 0x02
#: The process's registered ranges (cudaHostRegister is per process).
PINNED = PinnedRanges()


def _fault(what: str, exc: BaseException) -> DeviceFault:
    return DeviceFault(f"tierd's {what} on the GPU failed: {exc}")


class CudaEvent:
    def __init__(self, raw: torch.cuda.Event) -> None:
        self.raw = raw

    def synchronize(self) -> None:
        try:
            self.raw.synchronize()
        except RuntimeError as exc:
            raise _fault("copy", exc) from exc

    def query(self) -> bool:
        try:
            return bool(self.raw.query())
        except RuntimeError as exc:
            raise _fault("copy", exc) from exc

    def elapsed(self, later: "CudaEvent") -> float:  # type: ignore[override]
        return self.raw.elapsed_time(later.raw) / 1e3


class CudaStream:
    def __init__(self, raw: torch.cuda.Stream) -> None:
        self.raw = raw

    def run(self, work: Callable[[], object]) -> None:
        try:
            with torch.cuda.stream(self.raw):
                work()
        except RuntimeError as exc:  # a launch the driver refused (e.g. no kernel image for this GPU)
            raise _fault("launch", exc) from exc

    def record(self, timing: bool = False) -> CudaEvent:
        event = torch.cuda.Event(enable_timing=timing)
        event.record(self.raw)
        return CudaEvent(event)

    def wait(self, event: CudaEvent) -> None:  # type: ignore[override]
        self.raw.wait_event(event.raw)

    def wait_stream(self, other: "CudaStream") -> None:  # type: ignore[override]
        self.raw.wait_stream(other.raw)

    def synchronize(self) -> None:
        try:
            self.raw.synchronize()
        except RuntimeError as exc:
            raise _fault("copy", exc) from exc


@functools.cache
def _cudart() -> ctypes.CDLL | None:
    """The CUDA runtime torch loaded (found in this process's mappings), for the one call torch
    does not expose (`cudaHostGetDevicePointer`)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart" in line}
    except OSError:
        paths = set()
    major = (torch.version.cuda or "").split(".")[0]  # never a second runtime of another version
    for name in (*sorted(paths), *([f"libcudart.so.{major}"] if major else [])):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _clear_last_error() -> None:
    """Reset the calling thread's CUDA "last error" after a failed runtime call we handled:
    torch checks it after its own kernel launches and would raise our error as theirs."""
    lib = _cudart()
    if lib is not None:
        lib.cudaGetLastError()


def device_pointer(address: int) -> int | None:
    """The device address of registered host memory at `address` (None if it cannot be asked)."""
    lib = _cudart()
    if lib is None:
        return None
    out = ctypes.c_void_p()
    rc = lib.cudaHostGetDevicePointer(ctypes.byref(out), ctypes.c_void_p(address), 0)
    return int(out.value or 0) if rc == 0 else None


def register(address: int, nbytes: int) -> bool:
    rc = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, REGISTER_FLAGS))
    if rc != 0:
        _clear_last_error()
        log.warning("tierd: cudaHostRegister of %d bytes failed (cudaError %d); device copies stage through device "
                    "memory", nbytes, rc)
        return False
    seen = device_pointer(address)
    if seen != address:
        log.warning("tierd: the GPU addresses the registered arena at %s, not at its host address %#x; device copies "
                    "stage through device memory", "an unknown address" if seen is None else hex(seen), address)
        unregister(address, nbytes)
        return False
    log.info("tierd: arena registered as pinned memory (%d bytes at %#x)", nbytes, address)
    return True


def unregister(address: int, nbytes: int) -> None:
    rc = int(torch.cuda.cudart().cudaHostUnregister(address))
    if rc != 0:
        _clear_last_error()
        log.warning("tierd: cudaHostUnregister of %d bytes at %#x returned cudaError %d", nbytes, address, rc)


class CudaDevice:
    kind = "cuda"

    def __init__(self, device: torch.device) -> None:
        # Without an index: the calling thread's device now (vLLM's worker has set its rank's).
        self.torch_device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def use(self) -> None:
        """Make this device current on the calling thread: a thread starts on device 0, and a
        CUDA call there would open a context on another rank's GPU."""
        torch.cuda.set_device(self.torch_device)

    def stream(self) -> CudaStream:
        return CudaStream(torch.cuda.Stream(self.torch_device))

    def current(self) -> CudaStream:
        return CudaStream(torch.cuda.current_stream(self.torch_device))

    def empty(self, nbytes: int, stream: CudaStream) -> torch.Tensor:  # type: ignore[override]
        with torch.cuda.stream(stream.raw):  # the caching allocator reuses it in that stream's order
            return torch.empty(nbytes, dtype=torch.uint8, device=self.torch_device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: CudaStream) -> None:  # type: ignore[override]
        with torch.cuda.stream(stream.raw):
            dst.view(-1).view(torch.uint8).copy_(src.reshape(-1).view(torch.uint8), non_blocking=True)

    def pin(self, array: np.ndarray) -> PinnedRange | None:
        return PINNED.pin(array.ctypes.data, array.nbytes, register, unregister)

    def is_pinned(self, array: np.ndarray | torch.Tensor) -> bool:
        if isinstance(array, torch.Tensor):
            if array.device.type == "cuda":
                return False
            nbytes = array.numel() * array.element_size()
            return PINNED.covers(array.data_ptr(), nbytes) or array.is_pinned()
        return PINNED.covers(array.ctypes.data, array.nbytes)
