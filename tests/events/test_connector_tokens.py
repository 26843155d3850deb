"""The vLLM connector passes each saved chunk's token ids and its parent key with the put, so the
daemon's KV events carry them: a prompt prefilled in two steps (chunked prefill) is saved in two
puts, the second naming the first's last key. The scheduler and worker run as in
tests/connectors/test_async_saves.py (stand-ins for vLLM's step and request objects, real torch
KV tensors, a real daemon)."""
from __future__ import annotations

from types import SimpleNamespace

from connectors.vllm.config import ConnectorConfig
from connectors.vllm.scheduler import SchedulerSide
from tests.connectors.test_async_saves import BS, C, LAYOUT, _request, _step, _worker
from tests.events.subscriber import NodeView, Subscriber, endpoints
from tests.waiting import wait_for
from tierd.keys import chunk_keys

PROMPT = list(range(500, 524))  # three chunks of 8 tokens


def _continue(req_id: str, computed: int, scheduled: int) -> SimpleNamespace:
    """A step that continues a request's prefill from token `computed`."""
    return SimpleNamespace(
        scheduled_new_reqs=[],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[req_id], resumed_req_ids=set(), new_block_ids=[None],
                                              num_computed_tokens=[computed]),
        num_scheduled_tokens={req_id: scheduled}, preempted_req_ids=set())


def test_saved_chunks_carry_their_tokens_and_parents_into_the_events(daemon_factory):
    d = daemon_factory(extra=("--no-calibrate", "--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay",
                              "tcp://127.0.0.1:0"))
    sub = Subscriber(*endpoints(d.banner))
    s = SchedulerSide(ConnectorConfig(d.socket, chunk_size=C, load_plan=False, verify_sample=0.0), LAYOUT, BS, None)
    w = _worker(d.socket)
    try:
        a = _request("a", PROMPT)
        s.get_num_new_matched_tokens(a, 0)
        first = s.build_connector_meta(_step([(a, [0, 1, 2, 3, 4, 5], 12)]))  # tokens 0..12: one whole chunk
        second = s.build_connector_meta(_continue("a", 12, 12))  # 12..24: the other two
        assert [(sp.first_chunk, sp.parent, sp.tokens) for sp in first.saves + second.saves] == [
            (0, None, PROMPT[:8]), (1, first.saves[0].keys[0], PROMPT[8:24])]
        for meta in (first, second):
            w.wait_for_save(meta)
        assert w.saves.drain(30)
        keys = chunk_keys(LAYOUT, PROMPT)
        wait_for("three stores", lambda: sub.replay(0) and len(NodeView().apply(sub.events()).stored) == 3, 20)
        stored = [e for _, e in NodeView().apply(sub.events()).stored]
        assert [e.block_hashes[0] for e in stored] == keys
        assert [e.token_ids for e in stored] == [PROMPT[0:8], PROMPT[8:16], PROMPT[16:24]]
        assert [e.parent_block_hash for e in stored] == [None, keys[0], keys[1]]
        assert {e.block_size for e in stored} == {C}
    finally:
        w.shutdown()
        sub.close()
