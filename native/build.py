"""Finding or building the native libraries, never failing the caller.

Why a plain shared library loaded with ctypes, not a torch extension: without torch or Python
headers the CPU library compiles in about a second with any C++ compiler, the build cannot
break on a torch upgrade, and ctypes releases the GIL around each call (the connector copies
on its own threads).

Where the CPU library comes from, first found wins:
1. the one `setup.py` built next to this file (`pip install -e .` / `pip install .`), if it
   is not older than its source;
2. one built on first use into a cache directory (`$TIERD_NATIVE_CACHE`, else
   `$XDG_CACHE_HOME/tierd/native`, else `~/.cache/tierd/native`), keyed by a hash of the source
   and flags, written atomically so concurrent engine processes cannot see half a file;
   `TIERD_NATIVE_BUILD=0` forbids this;
3. none: the caller falls back (pure torch here, numpy in the vLLM connector), and says why.

The CUDA kernels (csrc/gather_scatter.cu, one source) are only ever built on first use, and only
where a CUDA-enabled torch sees a GPU (a CPU-only torch cannot hand them device pointers):
- with nvcc, where it exists, into a shared library for the device's exact architecture
  (`-arch=sm_XY`); the cached file's key holds that architecture and nvcc's release, so a
  cache directory shared between machines (a home directory on NFS, a container image) never
  hands one GPU a library built for another;
- else with NVRTC through CuPy (`cupy.cuda.nvrtc`: a pip-installed GPU machine has no nvcc),
  into a cubin for the device's architecture, keyed likewise by the NVRTC version.
Both are written atomically, like the CPU library.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CPU_SOURCE = HERE / "csrc" / "gather_scatter_cpu.cpp"
CUDA_SOURCE = HERE / "csrc" / "gather_scatter.cu"
CUDA_ITEM = HERE / "csrc" / "gather_scatter_item.h"  # included by the .cu (and the host emulation)
EMULATION_SOURCE = HERE / "csrc" / "gather_scatter_emulated.cpp"
#: Module name setup.py builds the CPU library under (an Extension; loaded with ctypes, not imported).
CPU_EXTENSION = "_gather_scatter_cpu"
CPU_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp")
CUDA_FLAGS = ("-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17")
NVRTC_OPTIONS = ("--std=c++17",)


@dataclass(frozen=True, slots=True)
class Found:
    """A library path, or None and the reason there is none (for the doctor report)."""

    path: Path | None
    how: str


def cache_dir() -> Path:
    if env := os.environ.get("TIERD_NATIVE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierd" / "native"


def _key(source: Path, tool: str, flags: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(source.read_bytes())
    if source == CUDA_SOURCE:
        h.update(CUDA_ITEM.read_bytes())
    h.update(" ".join((tool, *flags)).encode())
    return h.hexdigest()


def _write_atomically(out: Path, data: bytes) -> None:
    """Write `data` to `out` through a private temporary file and one rename (concurrent engine
    processes may build the same file; none can read half of one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(cmd: list[str], out: Path) -> str | None:
    """Run `cmd -o TMP` and move TMP to `out` atomically (concurrent builders each write their
    own TMP; the last rename wins with identical bytes). None on success, else a one-line reason."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return f"{Path(cmd[0]).name} failed: {lines[-1] if lines else 'exit status ' + str(proc.returncode)}"
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{Path(cmd[0]).name} failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def nvcc() -> str | None:
    if path := shutil.which("nvcc"):
        return path
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (p := Path(root) / "bin" / "nvcc").is_file():
            return str(p)
    return None


def source_hash(source: Path) -> str:
    """What setup.py and the lazy build pass as -DTIERD_SOURCE_HASH (setup.py computes the same)."""
    return hashlib.blake2b(source.read_bytes(), digest_size=8).hexdigest()


def installed_cpu_library() -> Path | None:
    """The library setup.py built beside this file, if it was built from the source there now
    (an editable install whose C++ changed since is rebuilt on first use instead)."""
    tag = b"tierd-source:" + source_hash(CPU_SOURCE).encode() if CPU_SOURCE.is_file() else b"tierd-source:"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = HERE / f"{CPU_EXTENSION}{suffix}"
        if p.is_file() and tag in p.read_bytes():
            return p
    return None


def find_cpu_library() -> Found:
    if p := installed_cpu_library():
        return Found(p, "built by setup.py")
    cxx = compiler()
    if cxx is None:
        return Found(None, "no C++ compiler (g++/c++/clang++) and no library built by setup.py")
    # Without OpenMP (a clang with no libomp) the library still works, single-threaded.
    variants = [CPU_FLAGS, tuple(f for f in CPU_FLAGS if f != "-fopenmp")]
    outs = [cache_dir() / f"libtierd_gs_cpu-{_key(CPU_SOURCE, Path(cxx).name, flags)}.so" for flags in variants]
    for out in outs:
        if out.is_file():
            return Found(out, "built on first use (cached)")
    if os.environ.get("TIERD_NATIVE_BUILD", "1") == "0":
        return Found(None, "TIERD_NATIVE_BUILD=0 and no library built by setup.py")
    why = ""
    for flags, out in zip(variants, outs):
        why = _compile([cxx, *flags, f'-DTIERD_SOURCE_HASH="{source_hash(CPU_SOURCE)}"', str(CPU_SOURCE)], out)
        if why is None:
            return Found(out, "built on first use" + ("" if "-fopenmp" in flags else " (without OpenMP)"))
    log.warning("tierd native: could not build the CPU gather/scatter library (%s); using the fallback", why)
    return Found(None, why)


def arch(capability: tuple[int, int]) -> str:
    """The real architecture of a compute capability: (9, 0) -> "sm_90"."""
    major, minor = capability
    return f"sm_{major}{minor}"


def device_capability() -> tuple[int, int] | str:
    """The compute capability of torch's current CUDA device, or why there is none to build for."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


@functools.cache
def nvcc_release(tool: str) -> str:
    """The release line of `nvcc --version` ("release 13.0, V13.0.88"), part of the build key:
    another nvcc may compile the same source differently (and have another default arch)."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = [line.strip() for line in out.splitlines() if "release" in line]
    return lines[-1] if lines else "unknown"


def cuda_library_variants(capability: tuple[int, int], release: str) -> list[tuple[tuple[str, ...], Path]]:
    """The nvcc builds to try for a device, best first, each with its cached file: the device's
    exact architecture, then nvcc's default (an nvcc too old to know the device still emits PTX
    the driver can compile). A pure function of the source, the capability and nvcc's release."""
    variants = [(*CUDA_FLAGS, f"-arch={arch(capability)}"), CUDA_FLAGS]
    tag = f"nvcc {release} for {arch(capability)}"
    return [(flags, cache_dir() / f"libtierd_gs_cuda-{_key(CUDA_SOURCE, tag, flags)}.so") for flags in variants]


def _built_for(flags: Sequence[str]) -> str:
    last = flags[-1]
    return f"built by nvcc on first use for {last.removeprefix('-arch=')}" if last.startswith("-arch=") \
        else "built by nvcc on first use, its default arch"


def find_cuda_library() -> Found:
    capability = device_capability()
    if isinstance(capability, str):
        return Found(None, capability)
    tool = nvcc()
    if tool is None:
        return Found(None, "nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    variants = cuda_library_variants(capability, nvcc_release(tool))
    for flags, out in variants:
        if out.is_file():
            return Found(out, f"{_built_for(flags)} (cached)")
    if os.environ.get("TIERD_NATIVE_BUILD", "1") == "0":
        return Found(None, "TIERD_NATIVE_BUILD=0")
    why = ""
    for flags, out in variants:
        why = _compile([tool, *flags, str(CUDA_SOURCE)], out)
        if why is None:
            return Found(out, _built_for(flags))
        log.info("tierd native: nvcc %s failed (%s)", " ".join(flags), why)
    log.warning("tierd native: could not build the CUDA gather/scatter library (%s)", why)
    return Found(None, why)


class NvrtcError(RuntimeError):
    """NVRTC could not compile the source; the message carries NVRTC's log."""


def nvrtc_version() -> tuple[int, int] | str:
    """NVRTC's (major, minor) as CuPy loads it, or why it cannot be used here."""
    try:
        from cupy.cuda import nvrtc
    except Exception as exc:  # ImportError, or a CuPy that fails to initialise
        return f"cupy is not usable: {exc}"
    try:
        major, minor = nvrtc.getVersion()
    except Exception as exc:  # libnvrtc missing: CuPy raises its own error types
        return f"libnvrtc did not load through cupy: {exc}"
    return int(major), int(minor)


def nvrtc_target(capability: tuple[int, int], supported: Sequence[int]) -> str:
    """What NVRTC compiles for a device: its exact arch ("sm_90", a cubin) where this NVRTC knows
    it, else PTX for the newest virtual arch below it ("compute_90", which the driver compiles
    for the device on load). A cubin where possible: under CUDA's minor-version compatibility
    a 12.x driver loads a cubin from a newer 12.x NVRTC, but refuses its PTX."""
    number = capability[0] * 10 + capability[1]
    if number in supported:
        return arch(capability)
    below = [a for a in supported if a <= number]
    if not below:
        raise NvrtcError(f"NVRTC knows no architecture at or below sm_{number} (it knows {sorted(supported)})")
    return f"compute_{max(below)}"


def compile_nvrtc(target: str, source: str | None = None) -> bytes:
    """Compile the CUDA source (or `source`, for the tests) with NVRTC for `target` ("sm_90":
    a cubin; "compute_90": PTX). gather_scatter_item.h is handed to NVRTC, not searched for.
    Raises NvrtcError carrying NVRTC's log."""
    from cupy.cuda import nvrtc

    text = CUDA_SOURCE.read_text() if source is None else source
    prog = nvrtc.createProgram(text, CUDA_SOURCE.name, [CUDA_ITEM.read_bytes()], [CUDA_ITEM.name.encode()])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={target}", *NVRTC_OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise NvrtcError(f"NVRTC could not compile {CUDA_SOURCE.name} for {target}: {exc}\n"
                             f"{nvrtc.getProgramLog(prog).strip()}") from None
        return nvrtc.getCUBIN(prog) if target.startswith("sm_") else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_module_path(target: str, version: tuple[int, int]) -> Path:
    """The cached module of `target` built by NVRTC `version` from the source as it is now."""
    tag = f"nvrtc {version[0]}.{version[1]}"
    suffix = ".cubin" if target.startswith("sm_") else ".ptx"
    return cache_dir() / f"tierd_gs_nvrtc-{_key(CUDA_SOURCE, tag, (target, *NVRTC_OPTIONS))}{suffix}"


def find_nvrtc_module() -> Found:
    """The kernels compiled by NVRTC for torch's current device (cached), or why there are none."""
    capability = device_capability()
    if isinstance(capability, str):
        return Found(None, capability)
    version = nvrtc_version()
    if isinstance(version, str):
        return Found(None, version)
    from cupy.cuda import nvrtc

    try:
        target = nvrtc_target(capability, [int(a) for a in nvrtc.getSupportedArchs()])
    except NvrtcError as exc:
        return Found(None, str(exc))
    out = nvrtc_module_path(target, version)
    if out.is_file():
        return Found(out, f"compiled by NVRTC {version[0]}.{version[1]} for {target} (cached)")
    if os.environ.get("TIERD_NATIVE_BUILD", "1") == "0":
        return Found(None, "TIERD_NATIVE_BUILD=0 and no cached NVRTC module")
    try:
        _write_atomically(out, compile_nvrtc(target))
    except (NvrtcError, OSError) as exc:
        log.warning("tierd native: could not compile the CUDA kernels with NVRTC (%s)", exc)
        return Found(None, str(exc).splitlines()[0])
    return Found(out, f"compiled by NVRTC {version[0]}.{version[1]} for {target}")


def compile_cuda_emulation(out: Path) -> str | None:
    """Build the host emulation of the CUDA kernel (tests only: the kernel's own addressing
    code, run over the grid on the CPU). None on success, else the reason."""
    cxx = compiler()
    if cxx is None:
        return "no C++ compiler"
    return _compile([cxx, "-O1", "-std=c++17", "-fPIC", "-shared", str(EMULATION_SOURCE)], out)


def compile_cuda_library(out: Path) -> str | None:
    """Build the CUDA shared library with nvcc's default arch, whether or not a GPU is here
    (tests: it must link and load). None on success, else the reason."""
    tool = nvcc()
    if tool is None:
        return "nvcc not found"
    return _compile([tool, *CUDA_FLAGS, str(CUDA_SOURCE)], out)


def compile_cuda_object(out: Path) -> str | None:
    """`nvcc -c` the CUDA source to an object file (what the tests do where nvcc exists, with or
    without a GPU). None on success, else the reason."""
    tool = nvcc()
    if tool is None:
        return "nvcc not found"
    return _compile([tool, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-c", str(CUDA_SOURCE)], out)
