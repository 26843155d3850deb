"""Fixtures of the object-tier tests: one real SeaweedFS S3 server per test session (always
stopped), a fresh bucket prefix per test, and daemons that use it."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

import obstore
import pytest

from tests.s3server import SeaweedS3
from tierd.launch import DaemonProcess
from tierd.tiers.object_store import open_store

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
