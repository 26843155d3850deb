"""Hit-rate curves: exact stack distances against brute-force LRU, SHARDS accuracy on the real
Mooncake conversation trace, and the `tierd mrc` command line contract."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.mrc.advice import GiB, recommend_capacity
from tierd.mrc.curve import hit_ratios, make_curve, mean_abs_error
from tierd.mrc.exact import COLD, running_max_by_request, stack_distances
from tierd.mrc.recency import RecencyTree
from tierd.mrc.references import flatten_requests
from tierd.mrc.sampling import HASH_MODULUS, key_hash
from tierd.mrc.shards import ShardsMRC, shards_fixed_rate_curves
from tierd.mrc.traces import read_mooncake

REPO = Path(__file__).resolve().parents[1]
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"
CONVERSATION = TRACES / "conversation_trace.jsonl"

#: The grid the SHARDS accuracy claims are made on: 1k..60k blocks in steps of 1k.
ACCURACY_GRID = list(range(1000, 60001, 1000))


# --------------------------------------------------------------------------- brute force


def lru_hits(keys, sizes, capacity):
    """Hit/miss per reference of an LRU of `capacity` (blocks or bytes) that evicts from the cold
    end until the total fits (an item larger than the cache is never kept)."""
    cache: OrderedDict = OrderedDict()
    used = 0
    hits = []
    for k, s in zip(keys, sizes):
        if k in cache:
            hits.append(True)
            cache.move_to_end(k)
            continue
        hits.append(False)
        cache[k] = s
        used += s
        while used > capacity:
            _, gone = cache.popitem(last=False)
            used -= gone
    return hits


def prefix_hits(requests, capacity):
    """Per request, the number of leading chunks present when it arrives; then all are touched."""
    cache: OrderedDict = OrderedDict()
    runs = []
    for keys in requests:
        run = 0
        while run < len(keys) and keys[run] in cache:
            run += 1
        runs.append(run)
        for k in keys:
            if k in cache:
                cache.move_to_end(k)
            else:
                cache[k] = 1
                if len(cache) > capacity:
                    cache.popitem(last=False)
    return runs


traces = st.lists(st.integers(0, 12), min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(traces)
def test_count_distances_match_brute_force_lru(keys):
    dist = stack_distances(keys)
    for capacity in range(1, len(set(keys)) + 2):
        assert list(dist <= capacity) == lru_hits(keys, [1] * len(keys), capacity)


@settings(max_examples=60, deadline=None)
@given(traces, st.lists(st.integers(0, 9), min_size=13, max_size=13))
def test_byte_distances_match_brute_force_byte_lru(keys, size_of):
    sizes = [size_of[k] for k in keys]
    dist = stack_distances(keys, sizes)
    for capacity in range(0, sum(size_of) + 2):
        assert list(dist <= capacity) == lru_hits(keys, sizes, capacity), capacity


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=6), min_size=1, max_size=25))
def test_prefix_curve_matches_brute_force_prefix_simulation(requests):
    refs = flatten_requests(_Req(r) for r in requests)
    prefix = running_max_by_request(stack_distances(refs.keys), refs.request_index)
    for capacity in range(1, 18):
        assert int(np.count_nonzero(prefix <= capacity)) == sum(prefix_hits(requests, capacity))


class _Req:
    def __init__(self, keys, sizes=None):
        self.keys = list(keys)
        self.sizes = list(sizes) if sizes is not None else [1] * len(keys)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=5), min_size=1, max_size=30),
       st.lists(st.integers(1, 7), min_size=21, max_size=21), st.sampled_from(["blocks", "bytes"]))
def test_online_rate_one_is_exact(requests, size_of, unit):
    """ShardsMRC at rate 1.0 tracks every key: its distances are the exact ones."""
    sizes = [[size_of[k] for k in r] for r in requests]
    refs = flatten_requests(_Req(r, s) for r, s in zip(requests, sizes))
    exact = stack_distances(refs.keys, refs.sizes if unit == "bytes" else None)
    est = ShardsMRC(1.0, unit=unit, bucket_width=1)
    online = [d for r, s in zip(requests, sizes) for d in est.access_request(r, s)]
    assert [math.inf if d == COLD else float(d) for d in exact] == online
    grid = list(range(1, 40))
    assert est.curve(grid) == make_curve(grid, hit_ratios(exact, grid))
    prefix = running_max_by_request(exact, refs.request_index)
    assert est.prefix_curve(grid) == make_curve(grid, hit_ratios(prefix, grid))


def test_recency_tree_renumbering_keeps_distances():
    """Small arrays force many renumberings; distances must not change across them."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 40, size=3000).tolist()
    tree = RecencyTree(min_size=2)
    got = [tree.touch(k, 1) for k in keys]
    exact = stack_distances(keys)
    assert [None if d == COLD else int(d) for d in exact] == got
    assert len(tree) == 40


def test_fixed_size_with_room_for_every_key_is_exact():
    keys = np.random.default_rng(3).integers(0, 300, size=5000).tolist()
    est = ShardsMRC.fixed_size(300)
    for k in keys:
        est.access(k)
    grid = list(range(10, 310, 10))
    assert est.rate == 1.0
    assert est.curve(grid) == make_curve(grid, hit_ratios(stack_distances(keys), grid))


def test_fixed_size_never_tracks_more_than_max_keys():
    est = ShardsMRC.fixed_size(64)
    rates = []
    for k in np.random.default_rng(5).integers(0, 5000, size=20000).tolist():
        est.access(k)
        assert est.tracked_keys <= 64
        rates.append(est.rate)
    assert rates == sorted(rates, reverse=True)  # the threshold only goes down
    assert est.rate < 0.05


def test_coarsened_histogram_stays_bounded_and_only_understates():
    keys = np.random.default_rng(11).zipf(1.3, size=20000) % 3000
    est = ShardsMRC(1.0, max_buckets=16)
    for k in keys.tolist():
        est.access(k)
    assert len(est._blocks.buckets) <= 16
    grid = list(range(100, 3001, 100))
    exact = make_curve(grid, hit_ratios(stack_distances(keys), grid))
    coarse = est.curve(grid)
    assert all(c[1] <= e[1] + 1e-9 for c, e in zip(coarse, exact))
    assert mean_abs_error(coarse, exact) < 0.05


def test_key_hash_of_int_is_hash_of_its_little_endian_bytes():
    assert key_hash(5) == xxhash.xxh3_64_intdigest((5).to_bytes(8, "little")) % HASH_MODULUS
    assert key_hash(-1) == key_hash(b"\xff" * 8)
    assert key_hash(b"abc") == key_hash(bytearray(b"abc"))
    assert key_hash(np.int64(7)) == key_hash(7)
    for bad in ("text", 1.5, 1 << 64, None):
        with pytest.raises(InvalidArgumentError):
            key_hash(bad)


@pytest.mark.parametrize("rate", [0, 2, -0.5, float("nan"), True, "0.1"])
def test_bad_sample_rates_are_refused(rate):
    with pytest.raises(InvalidArgumentError, match="sample rate"):
        ShardsMRC(rate)


def test_recommendation_stops_where_a_gib_stops_paying():
    g = GiB
    curve = [[1 * g, 0.10], [2 * g, 0.20], [3 * g, 0.25], [4 * g, 0.26], [5 * g, 0.261]]
    rec = recommend_capacity(curve, 0.02)
    assert (rec.capacity, rec.hit_ratio, rec.flattened) == (3 * g, 0.25, True)
    # a plateau followed by a second rise (an LRU cliff) is not the end of the curve
    cliff = [[1 * g, 0.1], [2 * g, 0.1], [3 * g, 0.3]]
    assert recommend_capacity(cliff, 0.05).capacity == 3 * g
    assert recommend_capacity(cliff, 0.05).flattened is False
    with pytest.raises(InvalidArgumentError):
        recommend_capacity(curve, 0)


# --------------------------------------------------------------------------- the real trace


@pytest.fixture(scope="module")
def conversation():
    if not CONVERSATION.exists():
        pytest.skip(f"Mooncake trace not found at {CONVERSATION}")
    requests = list(read_mooncake(CONVERSATION))
    refs = flatten_requests(requests)
    dist = stack_distances(refs.keys)
    return requests, refs, dist


def test_exact_curve_matches_the_trace_readme(conversation):
    _, refs, dist = conversation
    assert len(dist) == 288_500
    assert int(np.count_nonzero(dist == COLD)) == 182_790
    ratios = hit_ratios(dist, [5000, 10000, 20000, 50000])
    assert np.allclose(ratios, [0.110, 0.211, 0.287, 0.355], atol=0.002), ratios


def test_shards_fixed_rate_is_within_one_percent_of_exact(conversation):
    _, refs, dist = conversation
    exact = make_curve(ACCURACY_GRID, hit_ratios(dist, ACCURACY_GRID))
    prefix = make_curve(ACCURACY_GRID, hit_ratios(running_max_by_request(dist, refs.request_index), ACCURACY_GRID))
    shards, prefix_shards = shards_fixed_rate_curves(refs, ACCURACY_GRID, 0.01)
    assert mean_abs_error(shards, exact) < 0.01
    assert mean_abs_error(prefix_shards, prefix) < 0.01


def test_online_fixed_rate_equals_offline_fixed_rate(conversation):
    requests, refs, _ = conversation
    est = ShardsMRC.fixed_rate(0.01)
    for r in requests:
        est.access_request(r.keys)
    offline, offline_prefix = shards_fixed_rate_curves(refs, ACCURACY_GRID, 0.01)
    assert est.curve(ACCURACY_GRID) == offline
    assert est.prefix_curve(ACCURACY_GRID) == offline_prefix
    assert est.references == 288_500
    assert 0.005 < est.sampled_references / est.references < 0.02


def test_shards_fixed_size_is_within_one_percent_of_exact(conversation):
    requests, _, dist = conversation
    est = ShardsMRC.fixed_size(4000)
    for r in requests:
        est.access_request(r.keys)
    exact = make_curve(ACCURACY_GRID, hit_ratios(dist, ACCURACY_GRID))
    assert est.tracked_keys <= 4000
    assert est.rate < 0.05
    assert mean_abs_error(est.curve(ACCURACY_GRID), exact) < 0.01


# --------------------------------------------------------------------------- command line


def tierd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierd.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_json_contract(conversation, tmp_path):
    _, refs, dist = conversation
    plot = tmp_path / "mrc.png"
    out = tierd("mrc", "--trace", str(CONVERSATION), "--format", "mooncake", "--sample-rate", "0.01", "--json",
                "--grid", "5000,10000,20000,50000", "--block-bytes", "64MiB", "--tier-capacity", "dram=320GiB",
                "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    for name in ("exact", "shards", "prefix_exact", "prefix_shards"):
        assert [c for c, _ in report[name]] == [5000, 10000, 20000, 50000]
    expected = hit_ratios(dist, [5000, 10000, 20000, 50000])
    assert np.allclose([h for _, h in report["exact"]], expected, atol=1e-6)
    assert report["references"] == 288_500 and report["distinct"] == 182_790
    assert report["tiers"][0]["cumulative_blocks"] == 5120
    assert report["recommendation"]["capacity_bytes"] % (64 << 20) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_table(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"timestamp": i, "hash_ids": [0, 1, i % 3 + 2]}) for i in range(50)) + "\n")
    out = tierd("mrc", "--trace", str(trace), "--format", "mooncake", "--sample-rate", "1", "--grid", "1:5:1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["capacity_blocks", "exact", "shards", "prefix_exact", "prefix_shards"]
    assert "150 chunk references, 5 distinct" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trace", "{missing}"], "no such file"),
        (["--trace", "{good}", "--format", "csv"], "trace format 'csv'"),
        (["--trace", "{good}", "--sample-rate", "0"], "sample rate"),
        (["--trace", "{good}", "--sample-rate", "2"], "sample rate"),
        (["--trace", "{bad}"], ":2: not valid JSON"),
        (["--trace", "{good}", "--tier-capacity", "dram=8GiB"], "--block-bytes"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    good = tmp_path / "good.jsonl"
    good.write_text('{"timestamp": 0, "hash_ids": [1, 2]}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "hash_ids": [1, 2]}\n{"timestamp": 1, "hash_ids": [1,\n')
    paths = {"missing": tmp_path / "nope.jsonl", "good": good, "bad": bad}
    out = tierd("mrc", *[a.format(**paths) for a in args])
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tierd mrc: "), out.stderr
    assert message in err[0]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=5), min_size=1, max_size=40),
       st.lists(st.integers(1, 9), min_size=61, max_size=61), st.sampled_from([0.3, 0.6, 1.0]))
def test_offline_and_online_shards_agree_in_byte_mode(requests, size_of, rate):
    sizes = [[size_of[k] for k in r] for r in requests]
    refs = flatten_requests(_Req(r, s) for r, s in zip(requests, sizes))
    est = ShardsMRC.fixed_rate(rate, unit="bytes")
    for r, s in zip(requests, sizes):
        est.access_request(r, s)
    grid = list(range(1, 200, 3))
    offline, offline_prefix = shards_fixed_rate_curves(refs, grid, rate, unit="bytes")
    assert est.curve(grid) == offline
    assert est.prefix_curve(grid) == offline_prefix
