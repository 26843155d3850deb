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

The CUDA library is only ever built on first use, and only where nvcc and a CUDA-enabled
torch with a visible GPU exist (a CPU-only torch cannot hand it device pointers).
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def _key(source: Path, tool: str, flags: tuple[str, ...]) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(source.read_bytes())
    if source == CUDA_SOURCE:
        h.update(CUDA_ITEM.read_bytes())
    h.update(" ".join((tool, *flags)).encode())
    return h.hexdigest()


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


def find_cuda_library() -> Found:
    try:
        import torch
    except ImportError:
        return Found(None, "torch is not installed")
    if torch.version.cuda is None:
        return Found(None, f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return Found(None, "torch sees no CUDA device")
    tool = nvcc()
    if tool is None:
        return Found(None, "nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    # -arch=native (nvcc >= 11.5) compiles for the GPUs present; older nvcc: its default arch.
    variants = [(*CUDA_FLAGS, "-arch=native"), CUDA_FLAGS]
    outs = [cache_dir() / f"libtierd_gs_cuda-{_key(CUDA_SOURCE, 'nvcc', flags)}.so" for flags in variants]
    for out in outs:
        if out.is_file():
            return Found(out, "built on first use (cached)")
    if os.environ.get("TIERD_NATIVE_BUILD", "1") == "0":
        return Found(None, "TIERD_NATIVE_BUILD=0")
    why = ""
    for flags, out in zip(variants, outs):
        why = _compile([tool, *flags, str(CUDA_SOURCE)], out)
        if why is None:
            return Found(out, "built on first use")
    log.warning("tierd native: could not build the CUDA gather/scatter library (%s)", why)
    return Found(None, why)


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
