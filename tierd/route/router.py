"""`Router`: rank a fleet's nodes for one prompt by the prefill time each would save it.

Nodes are asked through their daemons (`DaemonNode`, below) or read from their KV-event streams
(`tierd.route.events.EventNode`); the scoring is the same.

What a router calls per request (`Router.route(token_ids)`): the prompt's chunk keys are
computed once with the layout's key function (`tierd.keys.chunk_keys`, the same keys the
engines' connectors store under), each node's daemon is asked where those chunks are with
`explain` (one small RPC per node; it counts as no lookup, touches no recency and starts no
object-tier probe, so routing never disturbs the caches it reads), and each node's answer is
priced with that node's own tier costs and the model's prefill cost (`tierd.route.score`).

A node's costs are its daemon's (`costs`: calibrated tier bandwidths and latencies, and the
model and device its engine declared or the daemon learned from its prefills), fetched once
and refreshed every `COSTS_TTL_S`. Where a node's engine has told its daemon nothing yet, the
router's own `shape` and `device` stand in. A node that cannot be asked scores nothing and
ranks last; routing never raises because one node is down.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from tierd.client import Client
from tierd.cost.device import DeviceThroughput
from tierd.cost.plan import CostModel
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.errors import InvalidArgumentError, TierdError
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.route.score import NodeScore, rank, score_node

#: Seconds a node's tier costs and model are reused before they are fetched again.
COSTS_TTL_S = 10.0


@dataclass
class DaemonNode:
    """One node, asked through its daemon's socket. One connection, kept open (thread-safe)."""

    name: str
    socket: str
    namespace: str = "default"
    _client: Client | None = field(default=None, repr=False)
    _costs: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def client(self) -> Client:
        if self._client is None:  # bound to the namespace: a tenant's keys are its own there
            self._client = Client.connect(self.socket, name=f"tierd-route-{self.name}", map_arena=False,
                                          namespace=self.namespace, timeout=5.0)
        return self._client

    def chunk_tiers(self, keys: Sequence[bytes]) -> list[str | None]:
        """The fastest tier holding each key on this node (None: not held)."""
        with self._lock:
            return [row["tier"] for row in self.client()._call("explain", keys=list(keys))["chunks"]]

    def costs(self, layout_id: str) -> dict[str, Any]:
        """The daemon's `costs` for the layout: tier costs, and the model its engine declared."""
        with self._lock:
            now = time.monotonic()
            if self._costs is None or now - self._costs[0] > COSTS_TTL_S:
                self._costs = (now, self.client()._call("costs", layout_id=layout_id))
            return self._costs[1]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    reset = close  # after a failed call: reconnect next time


class NodeSource(Protocol):
    """What the router asks of a node: `DaemonNode` (its daemon, per request) or
    `tierd.route.events.EventNode` (its KV-event stream, from memory)."""

    name: str

    def chunk_tiers(self, keys: Sequence[bytes]) -> list[str | None]: ...

    def costs(self, layout_id: str) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class Router:
    """Ranks `nodes` (name -> daemon socket, or `DaemonNode`s) for prompts of one `layout`."""

    def __init__(self, nodes: Mapping[str, str] | Sequence[NodeSource], layout: Layout, *,
                 namespace: str = "default", shape: ModelShape | None = None,
                 device: DeviceThroughput | None = None) -> None:
        self.nodes: list[NodeSource] = ([DaemonNode(n, s, namespace) for n, s in nodes.items()]
                                        if isinstance(nodes, Mapping) else list(nodes))
        if not self.nodes:
            raise InvalidArgumentError("route: give at least one node")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"route: node names must differ, got {names}")
        self.layout = layout
        self.namespace = namespace
        self.shape = shape
        self.device = device

    def route(self, token_ids: Sequence[int], *, extras: Sequence[Any] | None = None) -> list[NodeScore]:
        """Every node's score for the prompt `token_ids`, best first (see `tierd.route.score.rank`).
        `extras`: the per-chunk extra identity (LoRA, images, salt) the engine's connector keys with."""
        if len(token_ids) == 0:
            raise InvalidArgumentError("route: the prompt has no tokens")
        keys = chunk_keys(self.layout, token_ids, self.namespace, **({"extras": extras} if extras else {}))
        return self.route_keys(keys, len(token_ids))

    def route_keys(self, keys: Sequence[bytes], prompt_tokens: int) -> list[NodeScore]:
        """`route` for a prompt whose chunk keys the caller already has (`prompt_tokens` long)."""
        return rank([self._score(node, list(keys), prompt_tokens) for node in self.nodes])

    def best(self, token_ids: Sequence[int]) -> str:
        """The name of the node to send the prompt to."""
        return self.route(token_ids)[0].node

    def _score(self, node: NodeSource, keys: list[bytes], prompt_tokens: int) -> NodeScore:
        layout = self.layout
        try:
            tiers = node.chunk_tiers(keys) if keys else []
            model = self._model(node.costs(layout.layout_id))
        except (TierdError, OSError) as exc:
            node.reset()  # ask afresh next time
            return NodeScore(node.name, None, 0, error=str(exc))
        return score_node(node.name, tiers, model, chunk_tokens=layout.chunk_tokens, chunk_bytes=layout.chunk_bytes,
                          prompt_tokens=prompt_tokens)

    def _model(self, costs: Mapping[str, Any]) -> CostModel:
        """The node's tier costs with its engine's model, else the router's own shape and device."""
        tiers = [TierCost.from_dict({**d, "name": name}) for name, d in costs.get("tiers", {}).items()]
        shape = ModelShape.from_dict(costs["shape"]) if costs.get("shape") else self.shape
        if shape is None:
            raise InvalidArgumentError("route: no engine of this layout has told the node its model: give the "
                                       "router a model shape (--model-config)")
        device = DeviceThroughput.from_dict(costs["device"]) if costs.get("device") else self.device
        return CostModel(shape, device, tiers)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def layout_of(socket: str, layout_id: str | None = None) -> Layout:
    """The layout a daemon has registered (`layout_id`, or its only one): the layout the engines'
    keys are made with, fingerprint included."""
    with Client.connect(socket, name="tierd-route", map_arena=False) as c:
        layouts = c._call("layouts")["layouts"]
    if layout_id is not None:
        if layout_id not in layouts:
            raise InvalidArgumentError(f"layout {layout_id!r} is not registered at {socket}; it has "
                                       f"{sorted(layouts) or 'none'}")
        return Layout.from_dict(layouts[layout_id])
    if len(layouts) != 1:
        raise InvalidArgumentError(f"{socket} has {len(layouts)} registered layouts ({sorted(layouts) or 'none'}): "
                                   "name one with --layout-id")
    return Layout.from_dict(next(iter(layouts.values())))
