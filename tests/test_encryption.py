"""`--encrypt-key-file` through a real daemon and its NVMe tier: a bad key file stops the start,
encrypted chunks survive a restart with the key, and a restart without it (or with another)
serves misses, counted, never the bytes.

Before the option existed `tierd serve` refused `--encrypt-key-file` as an unknown flag, so
every test here failed at the daemon's start.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.tiers.crypto import ChunkCipher

MASTER = os.urandom(32)


def _key_file(tmp_path: Path, master: bytes, name: str = "tierd.key", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(master)
    path.chmod(mode)
    return path


def _nvme_row(c: Client) -> dict:
    return next(t for t in c.stat()["tiers"] if t["name"] == "nvme")


@pytest.mark.parametrize("how,message", [
    ("missing", "cannot open it (No such file or directory)"),
    ("0644", "mode 0644 lets group or others at the key; run `chmod 600"),
    ("short", "holds 16 bytes, not a key"),
    ("env", "mode 0640 lets group or others"),
])
def test_serve_refuses_a_bad_key_file_with_one_line_and_stores_nothing(tmp_path, how, message):
    path = {"missing": lambda: tmp_path / "absent.key",
            "0644": lambda: _key_file(tmp_path, MASTER, mode=0o644),
            "short": lambda: _key_file(tmp_path, MASTER[:16]),
            "env": lambda: _key_file(tmp_path, MASTER, mode=0o640)}[how]()
    flag = [] if how == "env" else ["--encrypt-key-file", str(path)]
    env = {**os.environ, **({"TIERD_ENCRYPT_KEY_FILE": str(path)} if how == "env" else {})}
    nvme = tmp_path / "nvme"
    r = subprocess.run([sys.executable, "-m", "tierd", "serve", "--socket", str(tmp_path / "s.sock"), "--dram",
                        "16MiB", "--nvme", "64MiB", "--nvme-dir", str(nvme), "--no-calibrate", *flag],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert f"--encrypt-key-file={str(path)!r}: {message}" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s.sock").exists() and not list(nvme.rglob("*.chunk"))


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_encrypted_nvme_chunks_round_trip_across_a_restart(daemon_factory, tmp_path, codec):
    key_file = str(_key_file(tmp_path, MASTER))
    nvme_dir = tmp_path / "nvme"
    extra = ("--encrypt-key-file", key_file, "--nvme-codec", codec, "--no-calibrate")
    keys = chunk_keys(SMALL, np.arange(256 * 4), "tenantA")
    payloads = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    if codec == "zstd":  # compressible, so the codec stores a blob that is then encrypted
        payloads = [np.where(np.arange(SMALL.chunk_bytes) % 5 == 0, p % 4, 0).astype(np.uint8) for p in payloads]
    d = daemon_factory(name="a", nvme_dir=nvme_dir, extra=extra)
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys, payloads, namespace="tenantA")
    assert d.stop() == 0  # SIGTERM writes the DRAM-only chunks down to NVMe
    files = sorted(nvme_dir.rglob("*.chunk"))
    assert len(files) == 4
    for f in files:
        on_disk = f.read_bytes()
        assert not any(p.tobytes()[i:i + 64] in on_disk for p in payloads for i in range(0, SMALL.chunk_bytes, 65536))
    d2 = daemon_factory(name="b", nvme_dir=nvme_dir, extra=extra)
    with Client.connect(d2.socket) as c:
        assert c.lookup(keys).tiers == ["nvme"] * 4
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
        stored = c.inspect(keys[0])["stored"]["nvme"]
        assert stored["encrypted"] is True and stored["codec"] == ("raw" if codec == "raw" else "zstd:3")
        assert (stored["ratio"] > 2) == (codec == "zstd")
        row = _nvme_row(c)
        assert row["corrupt"] == 0 and row["encrypt_key_id"] == ChunkCipher(MASTER).key_id.hex()


@pytest.mark.parametrize("restart", ["no key", "another key"])
def test_a_restart_without_the_key_serves_misses_and_counts_them(daemon_factory, tmp_path, restart):
    nvme_dir = tmp_path / "nvme"
    keys = chunk_keys(SMALL, np.arange(256 * 3))
    d = daemon_factory(name="a", nvme_dir=nvme_dir,
                       extra=("--encrypt-key-file", str(_key_file(tmp_path, MASTER)), "--no-calibrate"))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
    assert d.stop() == 0
    extra = ("--no-calibrate",) if restart == "no key" else \
        ("--no-calibrate", "--encrypt-key-file", str(_key_file(tmp_path, os.urandom(32), "other.key")))
    d2 = daemon_factory(name="b", nvme_dir=nvme_dir, extra=extra)
    assert "3 chunk files in" in d2.log() and "each is a miss, deleted when read" in d2.log()
    with Client.connect(d2.socket) as c:
        assert c.lookup(keys).prefix == 3  # indexed: the key file could still be put right
        for key in keys:
            assert c.get_chunks(SMALL, [key]) == []
        row = _nvme_row(c)
        assert row["corrupt"] == 3 and row["undecryptable"] == 3 and row["chunks"] == 0
        assert c.lookup(keys).prefix == 0
    assert not list(nvme_dir.rglob("*.chunk"))
