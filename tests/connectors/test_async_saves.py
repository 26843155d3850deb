"""Asynchronous saves of the vLLM connector, against a real daemon subprocess.

The worker side runs on real torch KV tensors; the scheduler side gets vLLM's step description
as plain objects with the fields the connector reads (a stand-in for vLLM's SchedulerOutput and
Request: the real ones need a running engine, and tests/e2e/test_connector.py drives those)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import torch

from connectors.vllm.config import ConnectorConfig
from connectors.link import DaemonLink
from connectors.vllm.metadata import SaveSpec, TierdConnectorMetadata
from connectors.vllm.paged import PagedKV
from connectors.vllm.saver import SaveQueue
from connectors.vllm.scheduler import SchedulerSide
from connectors.vllm.worker import WorkerSide
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

L, H, D, BS, NB, C = 2, 2, 8, 4, 16, 8
LAYOUT = Layout("m", "float32", L, H, D, chunk_tokens=C)
PROMPT = list(range(100, 120))  # two full chunks and a tail


def _worker(socket: str) -> WorkerSide:
    w = WorkerSide(ConnectorConfig(socket, chunk_size=C), LAYOUT, BS)
    caches = torch.randn(L, NB, H, BS, 2 * D)
    w.paged = PagedKV({f"model.layers.{i}.attn": caches[i] for i in range(L)}, LAYOUT, BS)
    return w


def _save_spec(save_id: int = 1) -> SaveSpec:
    return SaveSpec("r1", chunk_keys(LAYOUT, PROMPT), 0, [3, 7, 1, 9], save_id)


def test_wait_for_save_returns_before_the_save_and_the_chunks_land_intact(daemon):
    w = _worker(daemon.socket)
    spec = _save_spec()
    w.wait_for_save(TierdConnectorMetadata(saves=[spec]))
    assert w.saves.drain(30)
    assert w.worker_meta().saves_ended == [1]
    assert w.worker_meta() is None  # reported once
    with Client.connect(daemon.socket) as c:
        assert c.lookup(spec.keys).prefix == 2
        with c.get(LAYOUT, spec.keys) as lease:
            for j in range(2):
                want = np.empty(LAYOUT.chunk_bytes, np.uint8)
                w.paged.gather(spec.block_ids[2 * j : 2 * j + 2], want)
                assert bytes(lease.view(j)) == want.tobytes()
    w.shutdown()


def test_held_request_is_finished_only_after_its_saves_end(daemon):
    w = _worker(daemon.socket)
    gate = threading.Event()
    real_save = w._save
    w.saves._save = lambda client, spec: (gate.wait(30), real_save(client, spec))
    w.wait_for_save(TierdConnectorMetadata(saves=[_save_spec()]))
    w.bind(TierdConnectorMetadata(held=["r1"]))
    assert w.get_finished() == set()  # the save is still reading r1's blocks
    assert not w.saves.wait_for(["r1"], timeout=0.05)
    gate.set()
    assert w.saves.wait_for(["r1"], timeout=30)
    assert w.get_finished() == {"r1"}
    assert w.get_finished() == set()  # reported once
    w.shutdown()


def test_preemption_waits_for_the_preempted_requests_saves(daemon):
    w = _worker(daemon.socket)
    gate, entered = threading.Event(), threading.Event()
    real_save = w._save
    w.saves._save = lambda client, spec: (entered.set(), gate.wait(30), real_save(client, spec))
    w.wait_for_save(TierdConnectorMetadata(saves=[_save_spec()]))
    assert entered.wait(30)
    done = threading.Event()
    t = threading.Thread(target=lambda: (w.handle_preemptions(TierdConnectorMetadata(preempted=["r1"])), done.set()))
    t.start()
    assert not done.wait(0.05)  # blocked: the save still reads the blocks
    gate.set()
    t.join(30)
    assert done.is_set() and w.saves.finished({"r1"}) == {"r1"}
    w.shutdown()


def test_save_with_the_daemon_down_ends_as_a_no_op(short_dir):
    w = _worker(str(short_dir / "nobody.sock"))
    w.wait_for_save(TierdConnectorMetadata(saves=[_save_spec(5)]))
    assert w.saves.drain(30)
    assert w.worker_meta().saves_ended == [5]
    w.bind(TierdConnectorMetadata(held=["r1"]))
    assert w.get_finished() == {"r1"}
    w.shutdown()


def test_a_failing_save_does_not_stop_the_queue(daemon):
    calls: list[int] = []

    def save(client, spec):
        calls.append(spec.save_id)
        if spec.save_id == 1:
            raise ValueError("a bug")

    q = SaveQueue(DaemonLink(daemon.socket, LAYOUT, name="t", namespace="default", map_arena=False), save)
    q.submit(_save_spec(1))
    q.submit(_save_spec(2))
    assert q.drain(30)
    assert calls == [1, 2] and q.take_ended() == [1, 2]
    q.close()


# ---------------------------------------------------------------------- scheduler side


def _request(req_id: str, tokens: list[int]) -> SimpleNamespace:
    return SimpleNamespace(request_id=req_id, prompt_token_ids=tokens, all_token_ids=tokens)


def _step(new: list[tuple[SimpleNamespace, list[int], int]], preempted: set[str] = frozenset()) -> SimpleNamespace:
    """A step that schedules each (request, block ids, tokens) as a new request from token 0."""
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=r.request_id, block_ids=(blocks,), num_computed_tokens=0,
                                            prompt_token_ids=r.prompt_token_ids) for r, blocks, _ in new],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[], resumed_req_ids=set(), new_block_ids=[], num_computed_tokens=[]),
        num_scheduled_tokens={r.request_id: n for r, _, n in new},
        preempted_req_ids=set(preempted),
    )


def test_scheduler_waits_for_chunks_on_their_way_then_loads_them(daemon):
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=C, load_plan=False), LAYOUT, BS, None)
    a, b = _request("a", PROMPT), _request("b", PROMPT)
    assert s.get_num_new_matched_tokens(a, 0) == (0, False)  # cold
    meta = s.build_connector_meta(_step([(a, [0, 1, 2, 3, 4], len(PROMPT))]))
    (spec,) = meta.saves
    assert spec.keys == chunk_keys(LAYOUT, PROMPT) and spec.save_id > 0
    # b arrives while a's chunks are being saved: it waits instead of recomputing them
    assert s.get_num_new_matched_tokens(b, 0) == (None, False)
    assert s.request_finished(a) is True  # a's blocks must outlive the save
    assert s.build_connector_meta(_step([])).held == ["a"]
    w = _worker(daemon.socket)
    w.wait_for_save(meta)
    assert w.saves.drain(30)
    s.saves_ended(w.worker_meta().saves_ended)
    assert s.get_num_new_matched_tokens(b, 0) == (16, False)  # both chunks; the tail is computed
    assert s.request_finished(b) is False  # b saved nothing
    w.shutdown()


def test_scheduler_stops_waiting_when_the_save_fails(daemon):
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=C, load_plan=False), LAYOUT, BS, None)
    a, b = _request("a", PROMPT), _request("b", PROMPT)
    s.get_num_new_matched_tokens(a, 0)
    meta = s.build_connector_meta(_step([(a, [0, 1, 2, 3, 4], len(PROMPT))]))
    assert s.get_num_new_matched_tokens(b, 0) == (None, False)
    s.saves_ended([meta.saves[0].save_id])  # ended without storing anything
    assert s.get_num_new_matched_tokens(b, 0) == (0, False)
    assert s.request_finished(a) is False


def test_preempted_requests_reach_the_worker(daemon):
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=C), LAYOUT, BS, None)
    assert s.build_connector_meta(_step([], preempted={"x", "y"})).preempted == ["x", "y"]
