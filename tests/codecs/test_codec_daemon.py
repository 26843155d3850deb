"""Per-tier codecs through real daemons: NVMe chunk files and a real S3 bucket (SeaweedFS)."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import SMALL
from tests.objects.test_object_daemon import _object_tier, _uploaded, wait_for
from tierd.client import Client
from tierd.codecs.sample import synthetic_kv
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess


def tierd(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "tierd", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _payloads(keys: list[bytes]) -> list[np.ndarray]:
    """KV-like chunks (random bytes would not compress, and are not valid bf16 KV)."""
    return [np.frombuffer(synthetic_kv(SMALL, seed=int.from_bytes(k[:4], "little")), dtype=np.uint8) for k in keys]


def _tier(c: Client, name: str) -> dict:
    return next(t for t in c.stat()["tiers"] if t["name"] == name)


def _values_rel_mse(want: np.ndarray, got: bytes) -> float:
    a = torch.from_numpy(want.copy()).view(torch.bfloat16).view(SMALL.chunk_shape)[:, 1].float()
    b = torch.frombuffer(bytearray(got), dtype=torch.bfloat16).view(SMALL.chunk_shape)[:, 1].float()
    return float(((a - b) ** 2).sum() / (a ** 2).sum())


def test_nvme_codec_round_trip_stat_inspect_and_restart(daemon_factory, tmp_path):
    nvme_dir = tmp_path / "nvme"
    extra = ("--nvme-codec", "zstd-shuffle:1", "--no-calibrate")
    d = daemon_factory("z", dram="16MiB", nvme_dir=nvme_dir, extra=extra)
    keys = chunk_keys(SMALL, np.arange(256 * 12))
    payloads = _payloads(keys)
    with Client.connect(d.socket) as c:
        assert c.put_chunks(SMALL, keys, payloads) == 12
        c.evict(keys=keys, tier="dram")  # writes every chunk down through the codec
        assert set(c.lookup(keys).tiers) == {"nvme"}
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]  # lossless: byte-identical
        nvme = _tier(c, "nvme")
        assert nvme["codec"] == "zstd-shuffle:1" and nvme["codec_lossless"] is True
        assert nvme["codec_encoded"] == 12 and nvme["codec_decoded"] == 12 and nvme["codec_ratio"] > 1.2
        assert nvme["used_bytes"] < 12 * SMALL.chunk_bytes  # capacity counts what is stored, not the raw size
        stored = c.inspect(keys[0])["stored"]["nvme"]
        assert stored["codec"] == "zstd-shuffle:1" and stored["ratio"] > 1.2
    stat = tierd("stat", "--socket", d.socket)
    assert "nvme codec zstd-shuffle:1: ratio 1." in stat and "12 encoded, 0 stored raw, 12 decoded" in stat
    shown = tierd("inspect", "--socket", d.socket, keys[0].hex())
    assert re.search(rf"stored nvme +zstd-shuffle:1, {stored['stored_bytes']} bytes, {stored['ratio']:.2f}x smaller",
                     shown), shown
    d.stop()
    d = daemon_factory("z2", dram="16MiB", nvme_dir=nvme_dir, extra=("--no-calibrate",))  # now configured raw
    with Client.connect(d.socket) as c:
        assert c.lookup(keys).prefix == 12
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]  # read by the codec its header names


def test_object_codec_lossy_chunks_shared_with_a_raw_node(object_daemons, object_url):
    """Node a uploads int8k-tq3v objects; node b (no codec configured) finds, decodes and serves them."""
    a = object_daemons("a", object_url, extra=("--object-codec", "int8k-tq3v"))
    b = object_daemons("b", object_url)
    keys = chunk_keys(SMALL, np.arange(256 * 6) + 7)
    payloads = _payloads(keys)
    with Client.connect(a.socket) as ca:
        ca.put_chunks(SMALL, keys, payloads)
        wait_for("uploads", _uploaded(ca, 6))
        obj = _object_tier(ca)
        assert obj["codec"] == "int8k-tq3v" and obj["codec_lossless"] is False and obj["codec_ratio"] > 2.5
        assert obj["used_bytes"] < 6 * SMALL.chunk_bytes / 2.5
    with Client.connect(b.socket) as cb:
        cb.register_layout(SMALL)
        wait_for("remote lookup", lambda: cb.lookup(keys).prefix == 6)
        got = cb.get_chunks(SMALL, keys)
        assert len(got) == 6
        for want, chunk in zip(payloads, got):
            assert chunk != want.tobytes() and _values_rel_mse(want, chunk) <= 0.04
        assert cb.inspect(keys[0])["stored"]["object"]["codec"] == "int8k-tq3v"


@pytest.mark.parametrize("value", ["lz4", "zstd:99"])
def test_bad_codec_flag_stops_the_daemon_with_a_message(short_dir, tmp_path, value):
    d = DaemonProcess(short_dir / "bad.sock", ["--dram", "8MiB", "--nvme-dir", str(tmp_path / "n"),
                                               "--nvme-codec", value], log_path=tmp_path / "bad.log")
    with pytest.raises(RuntimeError, match=r"--nvme-codec=.*use one of raw, zstd"):
        d.start(timeout=60)
    assert not (tmp_path / "n").exists()  # nothing was created


def test_codec_device_cuda_without_a_gpu_stops_the_daemon(short_dir, tmp_path):
    args = ["--dram", "8MiB", "--nvme-dir", str(tmp_path / "n"), "--nvme-codec", "int8k-tq3v", "--codec-device", "cuda",
            "--no-calibrate"]
    d = DaemonProcess(short_dir / "dev.sock", args, log_path=tmp_path / "dev.log")
    if torch.cuda.is_available():  # a GPU machine: it starts and says where the codec runs
        d.start(timeout=60)
        try:
            with Client.connect(d.socket) as c:
                assert _tier(c, "nvme")["codec_device"] == "cuda"
        finally:
            d.stop()
        return
    with pytest.raises(RuntimeError, match=r"--codec-device='cuda'.*torch sees no CUDA device"):
        d.start(timeout=60)
