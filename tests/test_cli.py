"""The `tierd` command line against a real daemon: output contracts and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.keys import chunk_keys


def tierd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierd", *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


@pytest.fixture
def filled(daemon):
    keys = chunk_keys(SMALL, np.arange(256 * 4), "cli-ns")
    with Client.connect(daemon.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys], namespace="cli-ns")
        c.lookup(keys)
    return daemon, keys


def test_stat_json_contract(filled):
    daemon, _ = filled
    r = tierd("stat", "--socket", daemon.socket, "--json")
    assert r.returncode == 0, r.stderr
    stat = json.loads(r.stdout)
    names = [t["name"] for t in stat["tiers"]]
    assert names == ["dram", "nvme"]
    dram = stat["tiers"][0]
    for field in ("name", "capacity_bytes", "used_bytes", "chunks", "hits", "misses"):
        assert field in dram
    assert dram["chunks"] == 4 and dram["hits"] == 4 and dram["used_bytes"] == 4 * SMALL.chunk_bytes


def test_stat_table(filled):
    daemon, _ = filled
    r = tierd("stat", "--socket", daemon.socket)
    assert r.returncode == 0 and "dram" in r.stdout and "hit ratio" in r.stdout


def test_ls_inspect_pin_evict(filled):
    daemon, keys = filled
    rows = json.loads(tierd("ls", "--socket", daemon.socket, "--json", "--namespace", "cli-ns").stdout)
    assert sorted(r["key"] for r in rows) == sorted(k.hex() for k in keys)
    assert json.loads(tierd("ls", "--socket", daemon.socket, "--json", "--tier", "nvme").stdout) == []
    assert json.loads(tierd("ls", "--socket", daemon.socket, "--json", "--namespace", "nope").stdout) == []
    one = json.loads(tierd("ls", "--socket", daemon.socket, "--json", "--prefix", keys[0].hex()[:12]).stdout)
    assert [r["key"] for r in one] == [keys[0].hex()]
    table = tierd("ls", "--socket", daemon.socket, "--sort", "size", "--limit", "2").stdout.splitlines()
    assert len(table) == 3

    info = json.loads(tierd("inspect", "--socket", daemon.socket, "--json", keys[0].hex()).stdout)
    assert info["namespace"] == "cli-ns" and info["tiers"] == ["dram"] and info["size"] == SMALL.chunk_bytes

    assert tierd("pin", "--socket", daemon.socket, keys[0].hex()).returncode == 0
    assert json.loads(tierd("inspect", "--socket", daemon.socket, "--json", keys[0].hex()).stdout)["pinned"]
    r = tierd("evict", "--socket", daemon.socket, "--namespace", "cli-ns", "--yes", "--json")
    assert json.loads(r.stdout) == {"evicted": 3, "pinned": 1, "busy": 0}
    assert tierd("unpin", "--socket", daemon.socket, keys[0].hex()).returncode == 0
    r = tierd("evict", "--socket", daemon.socket, keys[0].hex(), "--yes")
    assert r.returncode == 0 and "evicted 1" in r.stdout
    assert json.loads(tierd("stat", "--socket", daemon.socket, "--json").stdout)["chunks"] == 0


def test_evict_tier_dram_demotes_to_nvme(filled):
    daemon, keys = filled
    r = tierd("evict", "--socket", daemon.socket, "--all", "--tier", "dram", "--yes", "--json")
    assert json.loads(r.stdout)["evicted"] == 4
    with Client.connect(daemon.socket) as c:
        assert c.lookup(keys).tiers == ["nvme"] * 4
        assert c.get_chunks(SMALL, keys) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in keys]


def test_evict_needs_confirmation(filled):
    daemon, keys = filled
    r = tierd("evict", "--socket", daemon.socket, "--all")  # stdin is not a terminal
    assert r.returncode != 0 and "--yes" in r.stderr
    assert json.loads(tierd("stat", "--socket", daemon.socket, "--json").stdout)["chunks"] == 4


@pytest.mark.parametrize("args,text", [
    (["inspect", "xyz"], "32 hex digits"),
    (["pin", "00" * 15], "32 hex digits"),
    (["inspect", "00" * 16], "not stored"),
    (["evict", "--yes"], "evict what"),
    (["evict", "--all", "--tier", "tape", "--yes"], "tier 'tape'"),
])
def test_bad_client_input(filled, args, text):
    daemon, _ = filled
    r = tierd(*args[:1], "--socket", daemon.socket, *args[1:])
    assert r.returncode != 0
    assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_no_daemon_is_a_clear_message(tmp_path):
    r = tierd("stat", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1
    assert "no tierd daemon at" in r.stderr and "tierd serve" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tierd", "stat"], capture_output=True, text=True,
                       env={"TIERD_SOCKET": str(tmp_path / "env.sock"), "PATH": ""})
    assert r.returncode == 1 and "env.sock" in r.stderr


@pytest.mark.parametrize("args,text", [
    (["--dram", "lots"], "--dram"),
    (["--nvme", "-1GiB"], "--nvme"),
    (["--metrics-port", "70000"], "--metrics-port"),
    (["--config", "/nonexistent/tierd.toml"], "tierd.toml"),
    (["--dram-policy", "belady"], "--dram-policy='belady': not an eviction policy; use one of"),
    (["--nvme-policy", ""], "--nvme-policy"),
    (["--nvme-admission", "twice"], "--nvme-admission='twice': use 'all'"),
    (["--object-admission", "7"], "--object-admission"),
])
def test_serve_rejects_bad_config(tmp_path, args, text):
    r = tierd("serve", "--socket", str(tmp_path / "s.sock"), *args)
    assert r.returncode != 0 and text in r.stderr
    assert not (tmp_path / "s.sock").exists()


def test_serve_rejects_bad_env(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tierd", "serve", "--socket", str(tmp_path / "s.sock")],
                       capture_output=True, text=True, timeout=60,
                       env={"TIERD_DRAM": "8 gigs", "PATH": "", "HOME": str(tmp_path)})
    assert r.returncode != 0 and "TIERD_DRAM" in r.stderr


def test_metrics_endpoint(daemon_factory):
    d = daemon_factory(extra=("--metrics-port", "0"))
    port = int(d.banner.rsplit(":", 1)[1].rstrip(")\n "))
    keys = chunk_keys(SMALL, np.arange(256 * 2))
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        c.lookup(keys)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'tierd_tier_hits_total{tier="dram"} 2.0' in text
    assert 'tierd_tier_chunks{tier="dram"} 2.0' in text
    assert 'tierd_rpc_seconds_count{op="lookup"} 1.0' in text
    assert 'tierd_tier_capacity_bytes{tier="nvme"}' in text
    assert 'tierd_tier_admission_declined_total{filter="all",tier="nvme"} 0.0' in text


def test_policy_and_admission_flags_reach_the_store(daemon_factory):
    """The tiers run what the flags name, and `stat` and the metrics say so."""
    d = daemon_factory(extra=("--dram-policy", "lru", "--nvme-policy", "lru", "--nvme-admission", "reuse",
                              "--metrics-port", "0"))
    port = int(d.banner.rsplit(":", 1)[1].rstrip(")\n "))
    with Client.connect(d.socket) as c:
        dram, nvme = c.stat()["tiers"][:2]
    assert (dram["policy"], nvme["policy"], nvme["admission"]) == ("lru", "lru", "reuse")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'tierd_tier_admission_admitted_total{filter="reuse",tier="nvme"} 0.0' in text


def test_doctor_reports_the_copy_implementation():
    r = subprocess.run([sys.executable, "-m", "tierd", "doctor", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cpu_backend"] in ("cpp", "torch") and "cuda_backend" in info
