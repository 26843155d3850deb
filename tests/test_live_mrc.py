"""The daemon's own hit-rate curve and access trace, from real lookups."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.errors import InvalidArgumentError
from tierd.keys import chunk_keys


def test_live_curve_and_recorded_trace(daemon_factory, tmp_path):
    trace = tmp_path / "trace.parquet"
    d = daemon_factory(dram="16MiB", nvme="64MiB", extra=("--record-trace", str(trace), "--mrc-sample-rate", "1"))
    prompts = [chunk_keys(SMALL, np.arange(256 * 8) + 10**6 * (i % 5)) for i in range(40)]  # 5 prompts, reused
    with Client.connect(d.socket) as c:
        for keys in prompts:
            if c.lookup(keys).prefix < len(keys):
                c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        r = subprocess.run([sys.executable, "-m", "tierd", "mrc", "--socket", d.socket, "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["requests"] == 40 and report["references"] == 40 * 8
        curve = dict((cap, h) for cap, h in report["shards"])
        # 40 distinct chunks, each missed once then hit: 35/40 of references hit once capacity >= 40 chunks.
        big = [h for cap, h in curve.items() if cap >= 40]
        assert big and abs(max(big) - 35 / 40) < 0.02
        tiers = {t["name"]: t for t in report["tiers"]}
        assert tiers["dram"]["cumulative_blocks"] == 32 and tiers["nvme"]["cumulative_blocks"] > 32
        table = subprocess.run([sys.executable, "-m", "tierd", "mrc", "--socket", d.socket, "--plot",
                                str(tmp_path / "mrc.png")], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "tier dram" in table.stdout
        assert (tmp_path / "mrc.png").stat().st_size > 1000
    assert d.stop() == 0
    t = pq.read_table(trace)
    assert t.num_rows == 40 * 8
    assert set(t.column("op").to_pylist()) == {"lookup"}
    # the recorded trace replays offline into the same hit ratio
    r = subprocess.run([sys.executable, "-m", "tierd", "mrc", "--trace", str(trace), "--format", "parquet",
                        "--sample-rate", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    exact = json.loads(r.stdout)["exact"]
    assert abs(max(h for _, h in exact) - 35 / 40) < 1e-6


@pytest.mark.parametrize("args,text", [({"grid": [0, 5]}, "grid"), ({"gain_per_gib": -1.0}, "gain_per_gib"),
                                       ({"grid": ["x"]}, "grid")])
def test_mrc_bad_arguments(daemon, args, text):
    with Client.connect(daemon.socket) as c:
        with pytest.raises(InvalidArgumentError, match=text):
            c._call("mrc", **args)
        assert c._call("mrc")["requests"] == 0  # the daemon still answers
