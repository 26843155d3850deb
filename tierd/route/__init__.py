"""Routing by the cost model: which node should serve a prompt (`tierd route`, `Router`).

    from tierd.route import Router, layout_of
    router = Router({"node-a": "/run/a.sock", "node-b": "/run/b.sock"}, layout_of("/run/a.sock"))
    node = router.best(prompt_token_ids)          # or router.route(...) for every node's score
    node = choose(router.route(prompt_token_ids), load)   # the same, balanced with the router's load

Nodes from their KV-event streams instead (no RPC per request): `EventNode(name, "tcp://a:5557",
"tcp://a:5558", socket="/run/a.sock")`, passed to `Router([...], layout)`.

`score.py` is the arithmetic (a node's cached prefix per tier, priced with its own tier costs
against the model's prefill cost), `router.py` asks the nodes' daemons.
"""
from __future__ import annotations

from tierd.route.events import EventNode
from tierd.route.router import DaemonNode, NodeSource, Router, layout_of
from tierd.route.score import NodeScore, choose, rank, score_node

__all__ = ["DaemonNode", "EventNode", "NodeScore", "NodeSource", "Router", "choose", "layout_of", "rank", "score_node"]
