"""Two SGLang processes, each with its own backend and host pool (in different layouts), share
one daemon: what one stores, the other finds and reads byte for byte."""
from __future__ import annotations

from typing import Any

import torch
from sglang.srt.mem_cache.utils import get_hash_str

from connectors.sglang.pages import HostPages
from tests.connectors.sglang.conftest import BackendFactory, Peer
from tests.connectors.sglang.pools import PAGE, fill_random, make_pool


def test_pages_stored_by_another_process_are_found_and_identical(daemon: Any, backend_factory: BackendFactory,
                                                                  sglang_peer: Peer) -> None:
    seed, n = 4242, 6
    assert sglang_peer.store(daemon.socket, "mha", "page_first", seed, n) == [True] * n

    # the peer's pool, rebuilt here from its seed: what the pages must hold
    theirs = make_pool("mha", "page_first")
    fill_random(theirs, seed)
    their_pages = HostPages(theirs, model="m", tp_rank=0, tp_size=1)
    their_idx = theirs.alloc(n * PAGE)

    ours = make_pool("mha", "layer_first")
    b = backend_factory(daemon.socket, ours)
    keys = get_hash_str(list(range(seed, seed + n * PAGE)), None, page_size=PAGE)
    assert b.batch_exists(keys) == n
    dst = ours.alloc(n * PAGE)
    assert b.batch_get_v1(keys, dst) == [True] * n
    assert b.pages is not None
    for i in range(n):
        got = b.pages.page(int(dst[i * PAGE]))
        want = their_pages.page(int(their_idx[i * PAGE]))
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), f"page {i}"
