"""bench.trace_replay: a real daemon replaying the first 300 Mooncake conversation requests
gets the hit ratios the exact LRU curve predicts for its tier capacities."""
from __future__ import annotations

import pytest

from bench.trace_replay import TRACES, ReplaySetup, chunk_key, layout_for, nvme_bytes_for, replay
from tierd.tiers.nvme.files import NvmeChunkFiles

pytestmark = pytest.mark.skipif(not TRACES["conversation"].exists(), reason="Mooncake traces not checked out")


def test_mapping_is_deterministic_and_sized() -> None:
    assert chunk_key(7) == chunk_key(7) != chunk_key(8) and len(chunk_key(7)) == 16
    assert layout_for(64 << 10).chunk_bytes == 64 << 10
    assert nvme_bytes_for(10, 64 << 10) == 10 * NvmeChunkFiles.file_bytes_for(64 << 10) == 10 * (4096 + (64 << 10))
    with pytest.raises(ValueError, match="multiple of 512"):
        layout_for(1000)


def test_replay_matches_exact_lru(tmp_path) -> None:
    # 300 requests, 8,490 chunk references, 7,814 distinct. Exact LRU: 0.037 at 2,500 chunks and
    # 0.073 at 6,000 (a steep part of the curve: 0.055 at 5,000). Watermarks 0.99/0.98 keep DRAM
    # within 1-2% of full, so its capacity is the configured one (the defaults, 0.95/0.85, let
    # the demoter take it down to 85% between bursts).
    setup = ReplaySetup(TRACES["conversation"], 300, chunk_bytes=4096, dram_chunks=2500, nvme_chunks=3500,
                        high_watermark=0.99, low_watermark=0.98, verify_every=8, mrc_sample_rate=1.0,
                        dram_policy="lru")  # the exact-LRU prediction is LRU's
    rep = replay(setup, workdir=tmp_path)
    c = rep.counts
    assert c.requests == 300 and c.references == 8490
    assert c.verified > 0 and c.mismatched == 0
    assert c.put_no_room == 0 and c.leased == c.prefix_hits  # every hit was served, every miss cached
    assert c.nvme_hits > 100  # the NVMe tier really served part of the hits

    # DRAM + NVMe behaves as one LRU of the summed capacity (DRAM demotes its LRU end into NVMe).
    # Measured on this prefix: equal to 4 decimals. 0.01 leaves room for timing: demotion is
    # asynchronous, so which chunks sit where at a lookup depends on how far the demoter got.
    t = setup.total_chunks
    assert abs(rep.total_hit_ratio - rep.exact[t]) < 0.01, (rep.total_hit_ratio, rep.exact[t])
    assert abs(rep.prefix_hit_ratio - rep.exact_prefix[t]) < 0.01
    # DRAM alone is close to, but not exactly, an LRU of its capacity: when a put finds no free
    # slot the store frees the least recently used *clean* chunks first (those already on NVMe,
    # i.e. recently promoted ones), skipping older dirty ones; on 1,000 requests at 1k chunks of
    # DRAM that gives +0.002 over exact LRU. 0.02 covers that and the timing noise.
    d = setup.dram_chunks
    assert abs(rep.dram_hit_ratio - rep.exact[d]) < 0.02, (rep.dram_hit_ratio, rep.exact[d])

    # The daemon's live SHARDS estimate saw the same lookups; asked to sample every key and with
    # fewer distinct keys than its 8192-key budget, it keeps rate 1: the exact curve.
    assert rep.live["sample_rate"] == 1.0 and rep.live["dropped_requests"] == 0
    assert abs(rep.live_at(t) - rep.exact[t]) < 1e-3 and abs(rep.live_at(d) - rep.exact[d]) < 1e-3
    # The daemon counts the leading run per tier, as the replay does.
    assert rep.tier("dram")["hits"] == c.prefix_dram and rep.tier("nvme")["hits"] == c.prefix_nvme
    assert rep.lookups_per_s > 0 and rep.pings_per_s > 0
