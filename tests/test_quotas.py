"""Per-namespace quotas: a tenant over its quota makes room from its own chunks, never another's."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.errors import InvalidArgumentError, PermissionDeniedError
from tierd.keys import chunk_keys
from tierd.store.quotas import NamespaceQuotas

CHUNK = SMALL.chunk_bytes  # 512 KiB


def tierd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierd", *args], capture_output=True, text=True, timeout=60)


def test_bookkeeping() -> None:
    q = NamespaceQuotas({"a": 100})
    q.charge("dram", "a", 60)
    q.charge("nvme", "a", 30)
    q.charge("dram", "b", 500)
    assert not q.over("dram", "a", 40) and q.over("dram", "a", 41) and not q.over("dram", "b", 10**9)
    assert q.report() == {"a": {"limit": 100, "used": {"dram": 60, "nvme": 30}},
                          "b": {"limit": None, "used": {"dram": 500, "nvme": 0}}}
    q.charge("dram", "a", -60)
    assert q.used("dram", "a") == 0 and q.report("a")["a"]["used"]["dram"] == 0
    for bad in (0, -1, True, 1.5, "1GiB"):
        with pytest.raises(InvalidArgumentError, match="positive number of bytes"):
            q.set("a", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        q.set("", 10)
    assert q.limits == {"a": 100}  # bad input changed nothing
    q.set("a", None)
    assert q.limits == {}


def _tokens(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32000, 256 * n)


def _tiers(c: Client, keys: list[bytes]) -> list[str | None]:
    return [(c.lookup([k]).tiers or [None])[0] for k in keys]


def test_a_tenant_over_its_quota_evicts_only_its_own_chunks(daemon_factory):
    # 16 DRAM slots and 64 NVMe files: without quotas, tenant a's 20 chunks would push b's 8 out of DRAM
    d = daemon_factory("q", dram="8MiB", nvme="32MiB", extra=("--quotas", f"a:{4 * CHUNK}", "--no-calibrate"))
    b_keys = chunk_keys(SMALL, _tokens(1, 8), namespace="b")
    a_keys = chunk_keys(SMALL, _tokens(2, 20), namespace="a")
    with Client.connect(d.socket) as c:
        assert c.put_chunks(SMALL, b_keys, [payload_for(k, CHUNK) for k in b_keys], namespace="b") == 8
        for i in range(0, 20, 2):  # two chunks a request, as an engine stores a prompt
            c.put_chunks(SMALL, a_keys[i:i + 2], [payload_for(k, CHUNK) for k in a_keys[i:i + 2]], namespace="a")
        assert _tiers(c, b_keys) == ["dram"] * 8  # untouched by a
        report = c.quota()
        assert report["a"]["limit"] == 4 * CHUNK
        assert report["a"]["used"]["dram"] <= 4 * CHUNK and report["a"]["used"]["nvme"] <= 4 * CHUNK
        assert report["b"]["limit"] is None and report["b"]["used"]["dram"] == 8 * CHUNK
        a_tiers = _tiers(c, a_keys)
        assert a_tiers[-4:] == ["dram"] * 4  # a's newest chunks stay in DRAM
        assert 1 <= a_tiers.count("nvme") <= 4 and a_tiers.count(None) >= 12  # its oldest went down, then out
        assert c.get_chunks(SMALL, a_keys[-2:]) == [payload_for(k, CHUNK).tobytes() for k in a_keys[-2:]]
        assert c.get_chunks(SMALL, b_keys) == [payload_for(k, CHUNK).tobytes() for k in b_keys]

        # operators change quotas at run time; a bound connection cannot
        shown = tierd("quota", "--socket", d.socket)
        assert shown.returncode == 0 and re.search(r"^a +2 MiB +2 MiB", shown.stdout, re.M), shown.stdout
        assert tierd("quota", "--socket", d.socket, "a", "8MiB").returncode == 0
        assert c.quota("a")["a"]["limit"] == 8 << 20
        bad = tierd("quota", "--socket", d.socket, "a", "lots")
        assert bad.returncode == 1 and "tierd quota:" in bad.stderr and "size like 8GiB" in bad.stderr
        assert tierd("quota", "--socket", d.socket, "a", "none").returncode == 0
        assert c.quota("a")["a"]["limit"] is None
        with pytest.raises(InvalidArgumentError, match="not both"):
            c._call("quota", namespace="a", bytes=1, clear=True)
        with pytest.raises(InvalidArgumentError, match="positive number of bytes"):
            c._call("quota", namespace="a", bytes=-5)
    with Client.connect(d.socket, namespace="b") as bound:
        with pytest.raises(PermissionDeniedError, match="cannot set quotas"):
            bound._call("quota", namespace="a", bytes=1)
        with pytest.raises(PermissionDeniedError, match="cannot see"):
            bound._call("quota", namespace="a")
        assert list(bound._call("quota")["quotas"]) == ["b"]


def test_a_namespace_full_of_leased_chunks_gets_no_more_room(daemon_factory):
    d = daemon_factory("q2", dram="8MiB", nvme="0", extra=("--quotas", f"a:{2 * CHUNK}", "--no-calibrate",
                                                        "--dram-policy", "lru"))  # which of a's goes: LRU's oldest
    keys = chunk_keys(SMALL, _tokens(3, 3), namespace="a")
    with Client.connect(d.socket) as c:
        c.put_chunks(SMALL, keys[:2], [payload_for(k, CHUNK) for k in keys[:2]], namespace="a")
        with c.get(SMALL, keys[:2]) as lease:  # both leased: nothing of a's may move
            assert lease.count == 2
            assert c.put_chunks(SMALL, keys[2:], [payload_for(keys[2], CHUNK)], namespace="a") == 0
        assert c._call("quota")["refused"] >= 1
        assert c.put_chunks(SMALL, keys[2:], [payload_for(keys[2], CHUNK)], namespace="a") == 1  # lease gone
        assert _tiers(c, keys) == [None, "dram", "dram"]
