"""Shared fixtures: real daemons as subprocesses on sockets in short temp dirs, always stopped;
a real S3 server (SeaweedFS) for the object tier, started once per session when a test asks.

Under ``CI=true`` a skipped test fails the run unless it is marked ``gpu`` (needs a CUDA device
or toolchain): anything else that skips there (a C++ build that failed, a trace not checked
out, a filesystem without O_DIRECT) is a broken set-up, not a pass."""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import obstore
import pytest

from tests.s3server import SeaweedS3
from tierd.daemon.launch import DaemonProcess
from tierd.layout import Layout
from tierd.tiers.object.bucket import open_store

#: A small layout: 4 layers, 2 KV heads, head dim 64, bf16, 256 tokens -> 512 KiB chunks.
SMALL = Layout("test-model", "bfloat16", 4, 2, 64, chunk_tokens=256)


def payload_for(key: bytes, nbytes: int) -> np.ndarray:
    """Deterministic bytes derived from a key, so any process can check what a chunk must hold."""
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    return rng.integers(0, 256, nbytes, dtype=np.uint8)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to ~107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def daemon_factory(tmp_path: Path, short_dir: Path) -> Iterator[DaemonFactory]:
    """Start daemons with `start(name=..., dram=..., nvme=..., extra=[...])`; all stopped at teardown."""
    started: list[DaemonProcess] = []

    def start(name: str = "d", dram: str = "64MiB", nvme: str = "256MiB", extra: tuple[str, ...] = (),
              nvme_dir: Path | None = None) -> DaemonProcess:
        nvme_dir = nvme_dir or tmp_path / f"{name}-nvme"
        d = DaemonProcess(short_dir / f"{name}.sock",
                          ["--dram", dram, "--nvme-dir", str(nvme_dir), "--nvme", nvme, *extra],
                          log_path=tmp_path / f"{name}-{len(started)}.log")
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop(timeout=30)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory()


# ------------------------------------------------------------------ object tier (S3)

BUCKET = "tierd"


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    server = SeaweedS3(Path(tempfile.mkdtemp(prefix="tierd-s3-")))
    server.start()
    try:
        server.create_bucket(BUCKET)
        # The first write makes SeaweedFS grow its volumes (seconds); do it once here.
        obstore.put(open_store(f"s3://{BUCKET}/warm-up", env=server.env(), timeout=60), "x", b"warm")
        yield server
    finally:
        server.stop()


@pytest.fixture
def object_url() -> str:
    """A prefix of its own in the shared bucket for each test."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


ObjectDaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def object_daemons(s3: SeaweedS3, tmp_path: Path, short_dir: Path) -> Iterator[ObjectDaemonFactory]:
    """Start daemons with the object tier: `start(name, url, dram=..., nvme=..., extra=[...])`."""
    started: list[DaemonProcess] = []

    def start(name: str, url: str, *, dram: str = "64MiB", nvme: str = "256MiB", extra: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(short_dir / f"{name}.sock",
                          ["--dram", dram, "--nvme-dir", str(tmp_path / f"{name}-nvme"), "--nvme", nvme,
                           "--object-url", url, "--node-id", name, "--no-calibrate", *extra],
                          env={**os.environ, **s3.env(), **(env or {})},
                          log_path=tmp_path / f"{name}-{len(started)}.log")
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop(timeout=30)


# ------------------------------------------------------------------ skips under CI


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, fail the run on any skip of a test not marked `gpu` (see the docstring)."""
    if not _in_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    bad = [r for r in skipped if "gpu" not in r.keywords]
    if not bad:
        return
    if reporter is not None:
        reporter.write_sep("=", f"CI=true: {len(bad)} skipped test(s) not marked gpu", red=True)
        for r in bad:
            reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
            reporter.write_line(f"{r.nodeid}: {reason}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
