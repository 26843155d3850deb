"""Shared fixtures: real daemons as subprocesses on sockets in short temp dirs, always stopped."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from tierd.launch import DaemonProcess
from tierd.layout import Layout

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
