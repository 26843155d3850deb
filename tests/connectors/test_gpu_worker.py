"""vLLM 0.33's sleep-mode hooks and the link's per-connection set-up (which pins the arena for
device copies), against a real daemon subprocess.

The device copies themselves are tested in test_gpu_copies.py (CUDA only). The sleep-mode and
link tests here run everywhere, on CPU caches: suspending forgets the cache the same way on
either device.
"""
from __future__ import annotations

import numpy as np
import torch

from connectors.vllm.config import ConnectorConfig
from connectors.link import DaemonLink
from connectors.vllm.metadata import LoadSpec, SaveSpec, TierdConnectorMetadata
from connectors.vllm.paged import PagedKV
from connectors.vllm.worker import WorkerSide
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

L, H, D, BS, NB, C = 2, 2, 8, 4, 16, 8
PROMPT = list(range(300, 316))  # two full chunks


def _cpu_worker(socket: str) -> tuple[WorkerSide, dict[str, torch.Tensor]]:
    layout = Layout("m", "float32", L, H, D, chunk_tokens=C)
    w = WorkerSide(ConnectorConfig(socket, chunk_size=C), layout, BS)
    caches = torch.randn(L, NB, H, BS, 2 * D)
    kv = {f"model.layers.{i}.attn": caches[i] for i in range(L)}
    w._kv_caches = kv
    w.paged = PagedKV(kv, layout, BS)
    from connectors.vllm.loader import LayerLoader

    w.loader = LayerLoader(w.paged)
    return w, kv


def _stored(socket: str, keys: list[bytes]) -> int:
    with Client.connect(socket) as c:
        return c.lookup(keys).prefix


def test_sleep_mode_forgets_the_cache_and_wakes_up_reading_it_again(daemon):
    w, kv = _cpu_worker(daemon.socket)
    keys = chunk_keys(w.layout, PROMPT)
    w.suspend()
    w.suspend()  # idempotent
    assert w.paged is None and w.loader is None
    # A save submitted while asleep stores nothing; a load becomes a load error (recompute).
    w.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r", keys, 0, [1, 2, 3, 4], 1)]))
    assert w.saves.drain(30) and _stored(daemon.socket, keys) == 0
    w.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r", keys, 0, 0, 16, [5, 6, 7, 8])]))
    assert w.get_block_ids_with_load_errors() == {5, 6, 7, 8}

    w.resume()
    w.resume()  # idempotent
    assert w.paged is not None and w.loader is not None
    w.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r", keys, 0, [1, 2, 3, 4], 2)]))
    assert w.saves.drain(30) and _stored(daemon.socket, keys) == 2
    with Client.connect(daemon.socket) as c, c.get(w.layout, keys) as lease:
        want = np.empty(w.layout.chunk_bytes, np.uint8)
        w.paged.gather([3, 4], want)
        assert bytes(lease.view(1)) == want.tobytes()
    w.shutdown()


def test_the_connector_declares_sleep_mode_support():
    from connectors.vllm.connector import SUPPORTED_VLLM, TierdConnector

    assert TierdConnector.supports_sleep_mode(None) is True
    assert "0.32." in SUPPORTED_VLLM and "0.33." in SUPPORTED_VLLM


def test_link_runs_its_set_up_on_each_connection_and_undoes_it_before_closing(daemon):
    events: list[str] = []

    def on_connect(client: Client):
        assert client.arena is not None  # set up with the arena mapped
        events.append("pin")
        return lambda: events.append("unpin")

    layout = Layout("m", "float32", L, H, D, chunk_tokens=C)
    link = DaemonLink(daemon.socket, layout, name="t", namespace="default",
                      map_arena=True, on_connect=on_connect)
    first = link.client()
    assert link.client() is first and events == ["pin"]  # once per connection
    link.drop(OSError("broken"))
    assert events == ["pin", "unpin"]
    link._down_until = 0.0  # skip the back-off
    assert link.client() is not None and events == ["pin", "unpin", "pin"]
    link.close()
    assert events == ["pin", "unpin", "pin", "unpin"]


def test_link_set_up_that_fails_leaves_no_connection(daemon):
    def on_connect(client: Client):
        raise OSError("cannot pin")

    link = DaemonLink(daemon.socket, Layout("m", "float32", L, H, D, chunk_tokens=C), name="t", namespace="default",
                      map_arena=True, on_connect=on_connect)
    assert link.client() is None  # treated as the daemon being unavailable: misses, not errors
    link.close()
