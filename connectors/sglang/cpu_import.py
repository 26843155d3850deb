"""Import SGLang's host-side Python on a machine without a GPU toolchain (tests, benchmarks).

SGLang's package imports `triton` (a GPU kernel compiler) and, through its model configs,
`torchvision` at module level, even on the path to `HiCacheStorage` and the host KV pools.
A CPU test machine may lack either: the only torchvision wheels on our package indexes are
CUDA builds whose operators fail to register against CPU torch 2.13.0, so it is never
installed; triton (a ~290 MB GPU compiler CPU torch does not need) arrives with vLLM's
dependencies in `tests/setup_env.py`, but not on a machine set up without them. So where
they are missing, this module
imports the SGLang modules tierd needs with **stand-in modules** for exactly those two
packages, and only while those imports run:

- a stand-in is used only for a package that is not installed (a real one always wins);
- the stand-ins leave `sys.modules` when the imports are done, so nothing imported later
  (torch, transformers, vLLM) ever sees them;
- they provide decorators (`triton.jit`, `triton.autotune`, ...) that return the function
  unchanged and attributes that are inert placeholders: no SGLang code on the host-pool and
  storage paths launches a triton kernel or a torchvision transform; a launch
  (`kernel[grid](...)`) would raise a TypeError, and a placeholder is never a number or a
  tensor, so it fails at its first use instead of computing.

Importing `sglang` also sets default environment variables for third-party JIT caches
(`sglang.srt.environ.redirect_third_party_caches`: TORCHINDUCTOR_CACHE_DIR and the like). A
test run imports SGLang into the same process that later starts vLLM engines, so the variables
SGLang added are removed again once its modules are imported (its host-side code does not JIT).

The storage backend (`connectors.sglang.backend`) never imports this module: in an SGLang
deployment triton and torchvision are installed and SGLang imports as it is.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings
from typing import Any, Iterator, Sequence

#: Packages replaced while SGLang's modules import, when they are not installed.
STAND_INS = ("triton", "torchvision")

#: The SGLang modules the tierd backend, its tests and its benchmark use.
SGLANG_MODULES = (
    "sglang.srt.mem_cache.hicache_storage",
    "sglang.srt.mem_cache.storage.backend_factory",
    "sglang.srt.mem_cache.pool_host.mha",
    "sglang.srt.mem_cache.pool_host.mla",
    "sglang.srt.mem_cache.device_pool_info",
    "sglang.srt.mem_cache.utils",
)


class _Placeholder:
    """Any attribute, call or subscript of a stand-in: inert, never a computed value."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, name: str) -> "_Placeholder":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> "_Placeholder":
        return _Placeholder(f"{self._name}()")

    def __getitem__(self, item: Any) -> "_Placeholder":
        return _Placeholder(f"{self._name}[]")

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


def _passthrough_decorator(fn: Any = None, **kwargs: Any) -> Any:
    """`@triton.jit` and `@triton.jit(...)`: the function itself, never compiled."""
    if fn is None or not callable(fn):
        return lambda f: f
    return fn


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("jit", "autotune", "heuristics"):
            return _passthrough_decorator if name == "jit" else (lambda *a, **k: _passthrough_decorator)
        if name == "cdiv":
            return lambda a, b: -(-a // b)
        return _Placeholder(f"{self.__name__}.{name}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves stand-in modules for the given top-level packages and all their submodules."""

    def __init__(self, tops: Sequence[str]) -> None:
        self.tops = frozenset(tops)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.tops:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__version__ = "0.0.0+tierd-stand-in"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


def missing_packages() -> list[str]:
    """Which of STAND_INS are not installed here (those get stand-ins)."""
    return [name for name in STAND_INS if name not in sys.modules and not _installed(name)]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name: not importable here
        return False


def import_sglang(modules: Sequence[str] = SGLANG_MODULES) -> list[str]:
    """Import `modules` (real SGLang code), with stand-ins for missing STAND_INS only while
    they import. Returns the names that were stood in for (empty where all are installed)."""
    if all(m in sys.modules for m in modules):
        return []
    missing = missing_packages()
    if "triton" in missing:
        # torch caches "is triton installed?" on first ask: ask now, while the answer is no,
        # so torch never takes the stand-in for a real compiler.
        # SGLang also calls torch.compile at import, which loads dynamo's backends: load them
        # now too, before any stand-in exists.
        import torch._dynamo.backends.debugging  # noqa: F401
        import torch._dynamo.repro.after_dynamo  # noqa: F401
        from torch.utils._triton import has_triton_package

        has_triton_package()
    finder = _StandInFinder(missing)
    env_before = set(os.environ)
    sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():
            # SGLang's quantization modules warn at import that they need CUDA: known, and noise here
            warnings.filterwarnings("ignore", message=r"Only CUDA", category=UserWarning)
            for name in modules:
                importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
        for name in list(_stand_in_names(missing)):
            del sys.modules[name]
        for key in set(os.environ) - env_before:
            del os.environ[key]
    return missing


def _stand_in_names(tops: Sequence[str]) -> Iterator[str]:
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in tops and isinstance(module, _StandInModule):
            yield name
