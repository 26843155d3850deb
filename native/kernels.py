"""The CUDA gather/scatter kernels (csrc/gather_scatter.cu, one source), from whichever compiler
this machine has, behind one `launch` call.

- `CudaKernels` ("nvcc"): the shared library nvcc builds from the source, loaded with ctypes;
  its extern "C" host entry point picks the kernel and launches it with the runtime API.
- `NvrtcKernels` ("nvrtc"): the same source compiled at run time by NVRTC through CuPy, for a
  machine without nvcc (the usual pip-installed GPU machine: torch and vLLM wheels, no CUDA
  toolkit); the module's extern "C" kernels are looked up by name and launched with CuPy on the
  caller's stream, with the grid and block of the nvcc launcher.

`load()` takes nvcc's library where nvcc builds one, else NVRTC's module, else says why neither.
Why CuPy rather than a second kernel language: one source means one addressing code to review,
to emulate on the host (tests/native/test_cuda_emulated.py) and to trust.

What runs without a GPU: the source compiles with nvcc and with NVRTC for several
architectures, the NVRTC module exports every entry point looked up here, and a launch without
a driver raises instead of crashing (tests/native/test_kernels.py). Launches against the torch
reference run only where torch sees a device (tests/native/test_cuda.py).
"""
from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from native.build import device_capability, find_cuda_library, find_nvrtc_module
from native.cache import PagedCache

ABI = 3
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
VECTOR_BYTES = 16
#: Threads per CTA, as the nvcc launcher in gather_scatter.cu (and its __launch_bounds__).
THREADS = 256
#: The extern "C" kernels of gather_scatter.cu, by element width; "v16" moves 16-byte groups.
ENTRY_POINTS = {1: "tierd_gather_scatter_u8", 2: "tierd_gather_scatter_u16", 4: "tierd_gather_scatter_u32",
                8: "tierd_gather_scatter_u64", "v16": "tierd_gather_scatter_v16"}
#: cudaErrorInvalidValue, what the nvcc launcher returns for arguments no kernel takes.
_INVALID_VALUE = 1


def vectorisable(cache: PagedCache, chunk_ptrs: np.ndarray) -> bool:
    """Whether the kernel may move 16-byte groups: unit dim stride on the paged side, and every
    head row starting 16-byte aligned on both sides (bases, strides and row lengths)."""
    isz = cache.itemsize
    return bool(
        (cache.strides[:, :, 3] == 1).all()
        and (cache.head_dim * isz) % VECTOR_BYTES == 0
        and (cache.ptrs % VECTOR_BYTES == 0).all()
        and ((cache.strides[:, :, :3] * isz) % VECTOR_BYTES == 0).all()
        and (chunk_ptrs % VECTOR_BYTES == 0).all()
    )


class CudaKernels:
    """The nvcc-built library (or its host emulation, which has the same entry points)."""

    name = "nvcc"

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        if lib.tierd_cuda_abi() != ABI:
            raise OSError(f"{path} speaks CUDA ABI {lib.tierd_cuda_abi()}, this package {ABI}")
        fn = lib.tierd_cuda_gather_scatter
        fn.argtypes = [ctypes.c_int, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _PTR, _I64, ctypes.c_int, _PTR]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._probe = lib.tierd_cuda_probe
        self._probe.restype = ctypes.c_int

    def probe(self) -> int:
        """0 when the library's kernels can run on the current device, else the cudaError (a
        driver older than the runtime nvcc linked in, no code for this GPU)."""
        return int(self._probe())

    def launch(self, direction: int, ptrs: int, strides: int, layers: range, heads: int, head_dim: int,
               kv_factor: int, itemsize: int, chunk_ptrs: int, chunk_tokens: int, runs: int, num_runs: int,
               vectorise: bool, stream: int) -> None:
        """Queue one copy of every run of `layers` on `stream` (a cudaStream_t as an int).
        direction 0 gathers into the chunks, 1 scatters into the cache; every pointer is an
        address the device can read (device memory or registered pinned memory)."""
        rc = self._fn(direction, ptrs, strides, layers.start, layers.stop, heads, head_dim, kv_factor, itemsize,
                      chunk_ptrs, chunk_tokens, runs, num_runs, int(vectorise), stream)
        if rc != 0:
            raise RuntimeError(f"tierd CUDA gather/scatter launch failed: cudaError {rc}")


def entry_point(vectorise: bool, itemsize: int) -> str | None:
    """The kernel a launch uses, as the nvcc launcher picks it; None where none fits."""
    return ENTRY_POINTS["v16"] if vectorise else ENTRY_POINTS.get(itemsize)


def kernel_args(direction: int, ptrs: int, strides: int, layer_lo: int, heads: int, head_dim: int, kv_factor: int,
                itemsize: int, chunk_ptrs: int, chunk_tokens: int, runs: int) -> tuple[np.generic, ...]:
    """The kernels' parameters (TIERD_KERNEL in gather_scatter.cu) as CuPy passes them: each a
    numpy scalar of the parameter's exact width (int gather, then 64-bit pointers and integers)."""
    i64, ptr = np.int64, np.uint64
    return (np.int32(direction == 0), ptr(ptrs), ptr(strides), i64(layer_lo), i64(heads), i64(head_dim),
            i64(kv_factor), i64(itemsize), ptr(chunk_ptrs), i64(chunk_tokens), ptr(runs))


@dataclass(frozen=True, slots=True)
class _StreamHandle:
    """A cudaStream_t seen through the CUDA stream protocol (CuPy's `Stream.from_external`)."""

    handle: int

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.handle


def _cupy_stream(handle: int, device: int):
    """CuPy's view of a stream CuPy does not own (nothing is created or destroyed)."""
    import cupy

    from_external = getattr(cupy.cuda.Stream, "from_external", None)  # CuPy >= 14
    if from_external is not None:
        return from_external(_StreamHandle(handle))
    return cupy.cuda.ExternalStream(handle, device)  # CuPy 13


class NvrtcKernels:
    """The kernels NVRTC compiled (a cubin for the device's arch, or PTX), loaded with CuPy.

    The module is loaded on first use in each device's primary context (the one torch uses), so
    construction needs no driver. `launch` is `CudaKernels.launch`, call for call; it may be
    called from several threads at once."""

    name = "nvrtc"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._modules: dict[int, tuple[Any, dict[str, Any]]] = {}  # device -> (module, functions)

    def functions(self) -> tuple[int, dict[str, Any]]:
        """The current CUDA device (torch's) and its kernels by name, loading the module there
        first. Raises RuntimeError naming the CUDA error (no driver, a module for another arch)."""
        import cupy
        import torch

        try:
            # torch's current device (torch.cuda.stream() switches to the stream's device); CuPy's
            # runtime only where torch sees none (then it raises the driver's error).
            device = torch.cuda.current_device() if torch.cuda.is_available() else cupy.cuda.runtime.getDevice()
            loaded = self._modules.get(device)
            if loaded is None:
                with self._lock:
                    if device not in self._modules:
                        # A runtime call binds the device's primary context (torch's) to this thread:
                        # the module is loaded into the current context, and launched in it.
                        torch.cuda.synchronize(device)
                        module = cupy.cuda.function.Module()
                        module.load_file(str(self.path))
                        self._modules[device] = (module, {n: module.get_function(n) for n in ENTRY_POINTS.values()})
                    loaded = self._modules[device]
        except RuntimeError as exc:  # CuPy's CUDARuntimeError and CUDADriverError, torch's errors
            raise RuntimeError(f"tierd CUDA gather/scatter (nvrtc): loading {self.path.name} failed: {exc}") from exc
        return device, loaded[1]

    def launch(self, direction: int, ptrs: int, strides: int, layers: range, heads: int, head_dim: int,
               kv_factor: int, itemsize: int, chunk_ptrs: int, chunk_tokens: int, runs: int, num_runs: int,
               vectorise: bool, stream: int) -> None:
        """As `CudaKernels.launch`: grid (runs, K/V x layers), 256 threads, on `stream`."""
        if num_runs == 0 or layers.stop <= layers.start:
            return
        name = entry_point(vectorise, itemsize)
        if kv_factor not in (1, 2) or name is None:
            raise RuntimeError(f"tierd CUDA gather/scatter launch failed: cudaError {_INVALID_VALUE} "
                               f"(cudaErrorInvalidValue: kv_factor {kv_factor}, itemsize {itemsize})")
        device, kernels = self.functions()
        grid = (int(num_runs), int(kv_factor * (layers.stop - layers.start)))
        args = kernel_args(direction, ptrs, strides, layers.start, heads, head_dim, kv_factor, itemsize, chunk_ptrs,
                           chunk_tokens, runs)
        try:
            kernels[name](grid, (THREADS,), args, stream=_cupy_stream(stream, device))
        except RuntimeError as exc:
            raise RuntimeError(f"tierd CUDA gather/scatter launch failed (nvrtc): cudaError {exc}") from exc


def cupy_version() -> str | None:
    """CuPy's version, or None where it does not import."""
    try:
        import cupy
    except Exception:  # ImportError, or a CuPy build that fails to initialise
        return None
    return str(cupy.__version__)


@functools.cache
def load() -> tuple[CudaKernels | NvrtcKernels | None, str]:
    """The kernels for torch's current device, and how they were obtained; or None and why.
    nvcc's library where nvcc builds one, else NVRTC's module where CuPy and libnvrtc exist."""
    found = find_cuda_library()
    if found.path is not None:
        try:
            library = CudaKernels(found.path)
            rc = library.probe()
            if rc == 0:
                return library, f"nvcc library {found.path} ({found.how})"
            nvcc_why = f"{found.path} cannot run on this device (cudaError {rc})"
        except (OSError, AttributeError) as exc:
            nvcc_why = f"{found.path} did not load: {exc}"
    else:
        nvcc_why = found.how
    if isinstance(capability := device_capability(), str):
        return None, capability  # no device: neither compiler is worth asking
    found = find_nvrtc_module()
    if found.path is None:
        return None, f"nvcc: {nvcc_why}; nvrtc: {found.how}"
    kernels = NvrtcKernels(found.path)
    try:
        kernels.functions()  # a module that cannot load here is reported now, not at the first copy
    except RuntimeError as exc:
        return None, f"nvcc: {nvcc_why}; nvrtc: {exc}"
    return kernels, f"nvrtc via cupy {cupy_version()}: {found.path} ({found.how}; nvcc: {nvcc_why})"
