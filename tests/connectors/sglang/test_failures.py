"""A daemon that is down, or dies while SGLang runs, is a miss: no exception into SGLang's
storage threads, no host-pool page reported loaded that was not read whole from the store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sglang.srt.mem_cache.utils import get_hash_str

from tests.conftest import DaemonFactory
from tests.connectors.sglang.conftest import BackendFactory
from tests.connectors.sglang.pools import PAGE, fill_random, make_pool


def _snapshot(pool: Any) -> torch.Tensor:
    return pool.kv_buffer.view(torch.uint8).clone()


def test_no_daemon_at_start_is_misses_and_touches_nothing(short_dir: Path, backend_factory: BackendFactory) -> None:
    pool = make_pool("mha", "page_first")
    fill_random(pool, 1)
    b = backend_factory(str(short_dir / "absent.sock"), pool)
    keys = get_hash_str(list(range(3 * PAGE)), None, page_size=PAGE)
    idx = pool.alloc(3 * PAGE)
    before = _snapshot(pool)
    assert b.batch_exists(keys) == 0 and not b.exists(keys[0])
    assert b.batch_set_v1(keys, idx) == [False] * 3
    assert b.batch_get_v1(keys, idx) == [False] * 3
    assert b.batch_get(keys) == [None] * 3 and b.get(keys[0]) is None
    assert b.batch_set(keys, [pool.get_data_page(int(idx[0]))] * 3) is False
    assert torch.equal(_snapshot(pool), before)


def test_daemon_killed_mid_run_is_misses_then_recovers(daemon_factory: DaemonFactory, tmp_path: Path,
                                                       backend_factory: BackendFactory) -> None:
    nvme = tmp_path / "nvme"
    d = daemon_factory(name="k", nvme_dir=nvme)
    pool = make_pool("mla", "page_first_direct")
    fill_random(pool, 2)
    b = backend_factory(d.socket, pool, mla=True)
    b.link.retry_seconds = 0.0  # reconnect on the next call instead of after the usual back-off
    keys = get_hash_str(list(range(4 * PAGE)), None, page_size=PAGE)
    src = pool.alloc(4 * PAGE)
    want = [pool.get_data_page(int(src[i * PAGE])).clone() for i in range(4)]
    assert b.batch_set_v1(keys, src) == [True] * 4

    d.kill()
    dst = pool.alloc(4 * PAGE)
    before = _snapshot(pool)
    assert b.batch_exists(keys) == 0
    assert b.batch_get_v1(keys, dst) == [False] * 4
    assert b.batch_set_v1(keys, src) == [False] * 4
    assert torch.equal(_snapshot(pool), before)

    # a new daemon on the same socket: the backend reconnects, and what it reads is what it wrote
    d2 = daemon_factory(name="k", nvme_dir=nvme)
    assert d2.socket == d.socket
    if b.batch_exists(keys) == 0:  # the killed daemon's DRAM chunks are gone: write them again
        assert b.batch_set_v1(keys, src) == [True] * 4
    assert b.batch_get_v1(keys, dst) == [True] * 4
    for i in range(4):
        assert torch.equal(pool.get_data_page(int(dst[i * PAGE])).view(torch.int16), want[i].view(torch.int16))
