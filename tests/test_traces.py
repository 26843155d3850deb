"""Trace readers (Mooncake JSONL, tierd Parquet) and the Parquet trace recorder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.mrc.curve import hit_ratios
from tierd.mrc.exact import stack_distances
from tierd.mrc.references import flatten_requests
from tierd.mrc.trace_recorder import TraceRecorder
from tierd.mrc.traces import TRACE_SCHEMA, read_mooncake, read_parquet, read_trace

REPO = Path(__file__).resolve().parents[1]
CONVERSATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake" / "conversation_trace.jsonl"


def key(i: int) -> bytes:
    return i.to_bytes(16, "little")


# --------------------------------------------------------------------------- Mooncake


def test_mooncake_reader(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 1500, "input_length": 1000, "hash_ids": [0, 1]}\n\n'
                    '{"timestamp": 3000, "hash_ids": [0, 2, 3]}\n')
    reqs = list(read_mooncake(path, block_bytes=4096))
    assert [r.keys for r in reqs] == [[0, 1], [0, 2, 3]]
    assert [r.sizes for r in reqs] == [[4096, 4096], [4096, 4096, 4096]]
    assert [r.timestamp for r in reqs] == [1.5, 3.0]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"timestamp": 0}', "hash_ids"),
        ('{"timestamp": 0, "hash_ids": [1, "2"]}', "hash_ids"),
        ('{"timestamp": 0, "hash_ids": [-1]}', "hash_ids"),
        ('{"timestamp": "soon", "hash_ids": [1]}', "timestamp"),
    ],
)
def test_mooncake_reader_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "hash_ids": [1]}\n' + line + "\n")
    with pytest.raises(InvalidArgumentError, match=f"t.jsonl:2: .*{message}"):
        list(read_mooncake(path))


def test_missing_file_fails_at_the_call_not_at_iteration(tmp_path):
    with pytest.raises(InvalidArgumentError, match="no such file"):
        read_mooncake(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidArgumentError, match="no such file"):
        read_parquet(tmp_path / "nope.parquet")
    with pytest.raises(InvalidArgumentError, match="trace format 'csv'"):
        read_trace(tmp_path / "nope", "csv")


def test_conversation_trace_counts():
    if not CONVERSATION.exists():
        pytest.skip(f"Mooncake trace not found at {CONVERSATION}")
    reqs = list(read_mooncake(CONVERSATION))
    assert len(reqs) == 12_031
    assert sum(len(r.keys) for r in reqs) == 288_500
    assert all(r.timestamp <= s.timestamp for r, s in zip(reqs, reqs[1:]))


# --------------------------------------------------------------------------- Parquet


def test_recorder_round_trip(tmp_path):
    path = tmp_path / "trace.parquet"
    clock = iter(float(t) for t in range(100, 200))
    with TraceRecorder(path, row_group_rows=4, clock=lambda: next(clock)) as rec:
        r0 = rec.record("lookup", "ns", [key(1), key(2), key(3)], 1024, ["dram", "nvme", None])
        rec.record("get", "ns", [key(1), key(2)], [1024, 1024], ["dram", "nvme"], request_id=r0)
        rec.record("put", "ns", [key(3)], [1024], None, request_id=r0, start_position=2)
        r1 = rec.record("lookup", "other", [key(1), key(4)], [1024, 2048])
    assert (r0, r1) == (0, 1)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.equals(TRACE_SCHEMA, check_metadata=False)
    assert pf.metadata.num_rows == 8
    assert pf.metadata.num_row_groups >= 2  # flushed every 4 rows, not only at close
    table = pf.read()
    assert table.column("position").to_pylist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert table.column("tier").to_pylist() == ["dram", "nvme", None, "dram", "nvme", None, None, None]

    lookups = list(read_parquet(path))
    assert [(r.request_id, r.keys, r.sizes, r.timestamp) for r in lookups] == [
        (0, [key(1), key(2), key(3)], [1024, 1024, 1024], 100.0),
        (1, [key(1), key(4)], [1024, 2048], 103.0),
    ]
    assert lookups[0].tiers == ["dram", "nvme", None]
    gets_puts = list(read_parquet(path, ops=("get", "put")))
    assert [(r.op, r.keys) for r in gets_puts] == [("get", [key(1), key(2)]), ("put", [key(3)])]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 1 << 40)), min_size=1, max_size=6),
                max_size=12),
       st.integers(1, 7))
def test_recorder_reader_round_trip_property(tmp_path_factory, requests, group_rows):
    path = tmp_path_factory.mktemp("rt") / "t.parquet"
    with TraceRecorder(path, row_group_rows=group_rows) as rec:
        for req in requests:
            rec.record("lookup", "ns", [k for k, _ in req], [s for _, s in req])
    back = list(read_parquet(path))
    assert [list(zip(r.keys, r.sizes)) for r in back] == requests


def test_recorder_refuses_bad_rows_and_buffers_nothing(tmp_path):
    path = tmp_path / "t.parquet"
    rec = TraceRecorder(path)
    bad_calls = [
        dict(op="scan", namespace="ns", keys=[key(1)], sizes=1),
        dict(op="get", namespace="ns", keys=[b"short"], sizes=1),
        dict(op="get", namespace="ns", keys=[key(1), key(2)], sizes=[1]),
        dict(op="get", namespace="ns", keys=[key(1)], sizes=[-1]),
        dict(op="get", namespace="ns", keys=[key(1)], sizes=1, tiers=["dram", "nvme"]),
        dict(op="get", namespace=3, keys=[key(1)], sizes=1),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidArgumentError):
            rec.record(**call)
    rec.record("get", "ns", [key(9)], 1)
    rec.close()
    rec.close()  # idempotent
    assert [r.keys for r in read_parquet(path, ops=("get",))] == [[key(9)]]
    with pytest.raises(InvalidArgumentError, match="closed"):
        rec.record("get", "ns", [key(1)], 1)


def test_empty_recorder_writes_a_readable_file(tmp_path):
    path = tmp_path / "t.parquet"
    TraceRecorder(path).close()
    assert pq.read_table(path).num_rows == 0
    assert list(read_parquet(path)) == []


def test_concurrent_records_keep_requests_whole(tmp_path):
    path = tmp_path / "t.parquet"
    rec = TraceRecorder(path, row_group_rows=7)

    def worker(base: int) -> None:
        for i in range(50):
            rec.record("lookup", "ns", [key(base + i * 10 + j) for j in range(5)], 1)

    threads = [threading.Thread(target=worker, args=(b * 100_000,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    reqs = list(read_parquet(path))
    assert len(reqs) == 200
    assert len({r.request_id for r in reqs}) == 200
    for r in reqs:
        first = int.from_bytes(r.keys[0], "little")
        assert [int.from_bytes(k, "little") for k in r.keys] == [first + j for j in range(5)]


def test_parquet_reader_rejects_other_files(tmp_path):
    not_parquet = tmp_path / "t.parquet"
    not_parquet.write_text('{"hash_ids": [1]}\n')
    with pytest.raises(InvalidArgumentError, match="not a Parquet file"):
        read_parquet(not_parquet)
    import pyarrow as pa
    other = tmp_path / "o.parquet"
    pq.write_table(pa.table({"ts": [1.0], "key": [b"k"]}), other)
    with pytest.raises(InvalidArgumentError, match="missing column"):
        read_parquet(other)
    with pytest.raises(InvalidArgumentError, match="ops"):
        read_parquet(other, ops=("scan",))


def test_recorded_trace_through_the_cli(tmp_path):
    """A trace the daemon records replays through `tierd mrc --format parquet`, and the block
    size is taken from the trace."""
    path = tmp_path / "t.parquet"
    with TraceRecorder(path) as rec:
        for i in range(60):
            rec.record("lookup", "ns", [key(0), key(1 + i % 4), key(100 + i % 7)], 1 << 20)
    refs = flatten_requests(read_parquet(path))
    grid = [1, 2, 4, 8, 16]
    exact = hit_ratios(stack_distances(refs.keys), grid)
    out = subprocess.run([sys.executable, "-m", "tierd.cli", "mrc", "--trace", str(path), "--format", "parquet",
                          "--sample-rate", "1", "--json", "--grid", "1,2,4,8,16"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [h for _, h in report["exact"]] == pytest.approx(exact.tolist(), abs=1e-6)
    assert report["shards"] == report["exact"]  # rate 1 samples everything
    assert report["block_bytes"] == 1 << 20
    assert report["references"] == 180
