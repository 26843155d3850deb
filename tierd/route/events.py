"""A node as its KV-event stream shows it: which chunks it holds, in which tier, without asking it.

`EventNode` subscribes to a daemon's `--kv-events` publisher (vLLM's wire format,
`tierd.events.wire`), catches up through the replay socket (everything still in the daemon's
replay buffer, from sequence 0), and then applies live batches in sequence order; a gap in the
sequence (a batch the SUB socket dropped) is filled from the replay socket again. What it
keeps is one set of tiers per chunk key, so `chunk_tiers(keys)` answers a router from memory:
no RPC per request, which is what a router in front of many nodes needs. A router that can
afford one RPC per node per request gets exact answers from `DaemonNode` instead; this view
lags the node by the publisher's batching window (50 ms).

Decoding uses msgpack only (no vLLM import): a batch is [ts, [event, ...], rank], an event a map
with "type" BlockStored / BlockRemoved / AllBlocksCleared; the tier is `ownership` (tierd's tier
name), else derived from `medium` and `locality`.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import msgpack

from tierd.cost.tiers import declared_costs

log = logging.getLogger(__name__)

#: Fastest first: the tier a chunk held in several is loaded from.
TIER_ORDER = ("dram", "nvme", "object")
_BY_MEDIUM = {("CPU", "LOCAL"): "dram", ("STORAGE", "LOCAL"): "nvme", ("STORAGE", "REMOTE"): "object"}
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def tier_of(event: dict[str, Any]) -> str | None:
    tier = event.get("ownership")
    if tier in TIER_ORDER:
        return tier
    return _BY_MEDIUM.get((event.get("medium"), event.get("locality")))


class EventNode:
    """One node's holdings from its KV-event stream (see the module docstring). `socket`: the
    node's daemon, asked only for its tier costs (`costs`, every few seconds); without it the
    declared tier costs are used."""

    def __init__(self, name: str, endpoint: str, replay_endpoint: str | None = None, *,
                 socket: str | None = None, timeout: float = 5.0) -> None:
        import zmq

        self.name = name
        self.endpoint, self.replay_endpoint = endpoint, replay_endpoint
        self.socket = socket
        self.timeout = timeout
        self.held: dict[bytes, set[str]] = {}
        self.last_seq = -1
        self.batches = 0
        self._lock = threading.Lock()
        self._daemon: Any = None
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(endpoint)
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"tierd-route-events-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ what a router asks

    def chunk_tiers(self, keys: Sequence[bytes]) -> list[str | None]:
        with self._lock:
            out: list[str | None] = []
            for key in keys:
                tiers = self.held.get(key)
                out.append(next((t for t in TIER_ORDER if t in tiers), None) if tiers else None)
            return out

    def costs(self, layout_id: str) -> dict[str, Any]:
        if self.socket is None:
            return {"tiers": {n: c.to_dict() for n, c in declared_costs(TIER_ORDER).items()}}
        if self._daemon is None:
            from tierd.route.router import DaemonNode

            self._daemon = DaemonNode(self.name, self.socket)
        return self._daemon.costs(layout_id)

    def sync(self) -> int:
        """Catch up now through the replay socket (everything after the last applied batch);
        the number of batches applied. A router calls it once after creating the node."""
        return self._replay(self.last_seq + 1) if self.replay_endpoint else 0

    def reset(self) -> None:
        """A call failed (its daemon, for costs): ask it afresh next time. The stream stays."""
        if self._daemon is not None:
            self._daemon.close()
            self._daemon = None

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._sub.close(linger=0)
        self._ctx.term()
        if self._daemon is not None:
            self._daemon.close()

    # ------------------------------------------------------------------ applying the stream

    def _run(self) -> None:
        while self._running:
            try:
                if not self._sub.poll(50):
                    continue
                _topic, seq_bytes, payload = self._sub.recv_multipart()
            except Exception:  # the context is closing
                return
            seq = int.from_bytes(seq_bytes, "big")
            if seq <= self.last_seq:
                continue
            if seq > self.last_seq + 1 and self.replay_endpoint:
                self._replay(self.last_seq + 1)  # a gap (or batches from before this subscriber)
                if seq <= self.last_seq:
                    continue
            self._apply(seq, payload)

    def _replay(self, start: int) -> int:
        import zmq

        dealer = self._ctx.socket(zmq.DEALER)
        dealer.connect(self.replay_endpoint)
        applied = 0
        try:
            dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while dealer.poll(int(self.timeout * 1000)):
                _empty, _topic, seq_bytes, payload = dealer.recv_multipart()
                if seq_bytes == END_SEQ:
                    break
                seq = int.from_bytes(seq_bytes, "big")
                if seq > self.last_seq:
                    self._apply(seq, payload)
                    applied += 1
        finally:
            dealer.close(linger=0)
        return applied

    def _apply(self, seq: int, payload: bytes) -> None:
        try:
            _ts, events, *_ = msgpack.unpackb(payload, raw=False)
        except Exception:
            log.warning("node %s: batch %d is not a KV-event batch; skipped", self.name, seq)
            return
        with self._lock:
            if seq <= self.last_seq:  # the live thread and a replay raced: applied already
                return
            for event in events:
                kind = event.get("type") if isinstance(event, dict) else None
                if kind == "AllBlocksCleared":
                    self.held.clear()
                    continue
                tier = tier_of(event) if kind in ("BlockStored", "BlockRemoved") else None
                if tier is None:
                    continue
                for key in event.get("block_hashes", ()):
                    if kind == "BlockStored":
                        self.held.setdefault(key, set()).add(tier)
                    elif key in self.held:
                        self.held[key].discard(tier)
                        if not self.held[key]:
                            del self.held[key]
            self.last_seq = seq
            self.batches += 1
