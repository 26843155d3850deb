"""`tierd route` and `tierd.route.Router` (issue 21, item 3): nodes ranked by the prefill time
their cached prefix saves, priced with each node's own tier costs — not fixed tier weights.

Real daemons as subprocesses hold different parts of a prompt; the router asks them with
`explain` (no lookup counted, nothing touched) and ranks them; a node that is down ranks last
without failing the request. Old code: there was no routing score at all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.cost.device import DeviceThroughput
from tierd.cost.plan import CostModel
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.keys import chunk_keys
from tierd.route import NodeScore, Router, choose, rank, score_node

# SMALL's model (4 layers, 2 KV heads of 64): a shape that matches it, and a slow device, so
# that loading a chunk from any tier saves time.
SHAPE = ModelShape(num_layers=4, hidden_size=512, num_attention_heads=8, num_kv_heads=2, head_dim=64,
                   intermediate_size=1024, vocab_size=1000)
DEVICE = DeviceThroughput(1e9)
PROMPT = list(np.random.default_rng(3).integers(0, 1000, 256 * 6 + 10))
CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "hidden_size": 512,
          "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 1024,
          "vocab_size": 1000}


def model(**tiers: tuple[float, float]) -> CostModel:
    return CostModel(SHAPE, DEVICE, [TierCost(name, bw, lat) for name, (bw, lat) in tiers.items()])


def test_the_score_is_the_cost_models_saving_not_a_tier_weight() -> None:
    m = model(dram=(10e9, 20e-6), nvme=(1e9, 200e-6))
    kw = {"chunk_tokens": 256, "chunk_bytes": SMALL.chunk_bytes, "prompt_tokens": len(PROMPT)}
    few_fast = score_node("a", ["dram"] * 2 + [None] * 4, m, **kw)
    many_slow = score_node("b", ["nvme"] * 6, m, **kw)
    nothing = score_node("c", [None] * 6, m, **kw)
    assert few_fast.cached_by_tier == {"dram": 512} and many_slow.cached_by_tier == {"nvme": 1536}
    assert nothing.saving_s == 0.0 and nothing.cached_tokens == 0
    # six chunks from NVMe save more prefill than two from DRAM here (a fixed DRAM > NVMe weight
    # would rank them the other way)
    assert many_slow.saving_s > few_fast.saving_s > 0
    assert few_fast.saving_s == pytest.approx(few_fast.plan.predicted_saving_s)
    # on a fast device with a slow disk, the same six NVMe chunks are worth less than two in DRAM
    fast = CostModel(SHAPE, DeviceThroughput(1e12), [TierCost("dram", 10e9, 20e-6), TierCost("nvme", 2e6, 0.05)])
    slow_disk, fast_dram = score_node("b", ["nvme"] * 6, fast, **kw), score_node("a", ["dram"] * 2, fast, **kw)
    assert slow_disk.saving_s < fast_dram.saving_s
    down = NodeScore("d", None, 0, error="no daemon")
    unpriced = score_node("e", ["dram"] * 6, CostModel(SHAPE, DeviceThroughput(), m.tiers.values()), **kw)
    assert unpriced.saving_s is None
    order = [s.node for s in rank([down, nothing, unpriced, few_fast, many_slow])]
    assert order == ["b", "a", "c", "e", "d"]


def _hold(socket: str, chunks: int, tier: str | None = None) -> None:
    keys = chunk_keys(SMALL, PROMPT)[:chunks]
    with Client.connect(socket) as c:
        c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys])
        if tier == "nvme":
            c.evict(tier="dram", everything=True)


def _hits(socket: str) -> list[int]:
    with Client.connect(socket, map_arena=False) as c:
        return [t["hits"] + t["misses"] for t in c.stat()["tiers"]]


def test_real_daemons_are_ranked_by_what_they_hold(daemon_factory, tmp_path: Path) -> None:
    a, b, c = (daemon_factory(name=n) for n in ("a", "b", "c"))
    _hold(a.socket, 6)
    _hold(b.socket, 2)
    with Client.connect(c.socket) as cl:
        cl.register_layout(SMALL)
    before = [_hits(d.socket) for d in (a, b, c)]
    nodes = {"c": c.socket, "b": b.socket, "a": a.socket, "down": str(tmp_path / "nobody.sock")}
    router = Router(nodes, SMALL, shape=SHAPE, device=DEVICE)
    scores = router.route(PROMPT)
    router.close()
    assert [s.node for s in scores] == ["a", "b", "c", "down"]
    assert [s.cached_tokens for s in scores[:3]] == [1536, 512, 0]
    assert scores[0].cached_by_tier == {"dram": 1536} and scores[0].saving_s > scores[1].saving_s > 0
    assert scores[2].saving_s == 0.0 and "no tierd daemon" in scores[3].error
    assert [_hits(d.socket) for d in (a, b, c)] == before  # routing counted no lookup anywhere

    # the CLI: the layout from the first node's daemon, the model from a config.json
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    tokens = tmp_path / "prompt.json"
    tokens.write_text(json.dumps([int(t) for t in PROMPT]))
    out = subprocess.run([sys.executable, "-m", "tierd", "route", "--node", f"a={a.socket}", "--node", f"b={b.socket}",
                          "--tokens-file", str(tokens), "--model-config", str(config), "--device-flops", "1G",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["layout_id"] == SMALL.layout_id and doc["prompt_tokens"] == len(PROMPT)
    assert [n["node"] for n in doc["nodes"]] == ["a", "b"] and doc["nodes"][0]["cached_tokens"] == 1536


@pytest.mark.parametrize(("args", "message"), [
    ([], "give at least one --node NAME=SOCKET"),
    (["--node", "a", "--tokens", "1"], "--node 'a': use NAME=SOCKET"),
    (["--node", "a=/x", "--node", "a=/y", "--tokens", "1"], "node 'a' is given twice"),
    (["--node", "a=/x"], "exactly one of --tokens or --tokens-file"),
    (["--node", "a=/x", "--tokens", "1,x"], "give integer token ids"),
    (["--node", "a=/x", "--tokens", "-3"], "none negative"),
    (["--node", "a=/x", "--tokens-file", "/nonexistent"], "cannot read it"),
    (["--node", "a=/x", "--tokens", "1", "--namespace", ""], "namespace ''"),
    (["--node", "a=/x", "--tokens", "1", "--device-flops", "fast"], "--device-flops 'fast'"),
    (["--node", "a=/nonexistent.sock", "--tokens", "1"], "no tierd daemon at /nonexistent.sock"),
])
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "tierd", "route", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_choose_keeps_a_long_history_on_its_node_and_spreads_what_gains_little() -> None:
    m = model(dram=(10e9, 20e-6), nvme=(1e9, 200e-6))
    kw = {"chunk_tokens": 256, "chunk_bytes": SMALL.chunk_bytes, "prompt_tokens": len(PROMPT)}
    history = score_node("a", ["dram"] * 6, m, **kw)  # holds the whole conversation
    system = score_node("b", ["dram"] + [None] * 5, m, **kw)  # holds only a shared first chunk
    empty = score_node("c", [None] * 6, m, **kw)
    down = NodeScore("d", None, 0, error="down")
    assert choose([history, system, empty, down], {"a": 50.0, "b": 0.0, "c": 0.0}) == "a"  # busy, still worth it
    assert choose([system, empty, down], {"b": 5.0, "c": 1.0}) == "c"  # gains little: the less loaded node
    assert choose([system, empty], {"b": 0.0, "c": 1.0}) == "b"
    assert choose([down], {}) == "d"  # nobody could be asked: the caller still gets a name


def test_event_stream_nodes_route_without_asking_the_daemons(daemon_factory) -> None:
    """Nodes read from their KV-event streams (`EventNode`): caught up through replay, then live;
    the ranking matches what the daemons hold, and follows an eviction."""
    import re

    from tests.waiting import wait_for
    from tierd.route import EventNode

    events = ("--no-calibrate", "--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0")
    a, b = daemon_factory(name="a", extra=events), daemon_factory(name="b", extra=events)
    _hold(a.socket, 6)  # before anyone subscribes: known through replay
    nodes = []
    for name, d in (("a", a), ("b", b)):
        m = re.search(r"kv events on (\S+?), replay on (\S+?)[;)]", d.banner)
        assert m is not None, d.banner
        node = EventNode(name, m[1], m[2], socket=d.socket)
        node.sync()
        nodes.append(node)
    keys = chunk_keys(SMALL, PROMPT)
    try:
        # published within the daemon's 50 ms batching window, before this subscriber connected
        wait_for("a's stores through replay", lambda: nodes[0].sync() >= 0 and nodes[0].chunk_tiers(keys) == ["dram"] * 6)
        assert nodes[1].chunk_tiers(keys) == [None] * 6
        router = Router(nodes, SMALL, shape=SHAPE, device=DEVICE)
        assert [s.node for s in router.route(PROMPT)] == ["a", "b"]
        _hold(b.socket, 6)  # live: b now holds all six in DRAM too
        wait_for("b's stores to arrive", lambda: nodes[1].chunk_tiers(keys) == ["dram"] * 6)
        with Client.connect(a.socket) as c:
            c.evict(tier="dram", everything=True)  # a's copies are on NVMe only now
        wait_for("a's evictions to arrive", lambda: nodes[0].chunk_tiers(keys) == ["nvme"] * 6)
        scores = router.route(PROMPT)
        assert [s.node for s in scores] == ["b", "a"] and scores[1].cached_by_tier == {"nvme": 1536}
    finally:
        for node in nodes:
            node.close()
