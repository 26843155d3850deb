"""A KV-event subscriber for the tests, decoding with vLLM's own types
(`vllm.distributed.kv_events.KVEventBatch`): what a router written for vLLM would see.

`Subscriber` collects batches from the PUB socket on a thread and asks the ROUTER socket for
replays (a DEALER, vLLM's protocol); `NodeView` applies events in sequence order to a model of
which (key, tier) copies the node holds, refusing an event that contradicts the order (a removal
of a copy not held, a second store of a copy held).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

from tests.waiting import wait_for

#: (medium, locality) of each tier, as the daemon publishes them (README "KV events").
MEDIA = {"dram": ("CPU", "LOCAL"), "nvme": ("STORAGE", "LOCAL"), "object": ("STORAGE", "REMOTE")}


def endpoints(banner: str) -> tuple[str, str | None]:
    """The bound publisher and replay endpoints from a daemon's ready line."""
    m = re.search(r"kv events on (\S+?)(?:, replay on (\S+?))?[;)]", banner)
    assert m is not None, banner
    return m[1], m[2]


def tier_of(event: BlockStored | BlockRemoved) -> str:
    """The tier an event names; its medium and locality must agree with the ownership field."""
    assert event.ownership in MEDIA, event
    assert (event.medium, event.locality) == MEDIA[event.ownership], event
    return event.ownership


class Subscriber:
    """A SUB socket on the daemon's publisher, read on a thread into `batches` (seq -> batch)."""

    def __init__(self, endpoint: str, replay: str | None = None, topic: bytes = b"") -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(endpoint)
        self.replay_endpoint = replay
        self.decoder = msgspec.msgpack.Decoder(KVEventBatch)
        self.batches: dict[int, KVEventBatch] = {}
        self.topics: set[bytes] = set()
        self.first_live: int | None = None  # the first seq this socket received live
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            if not self.sub.poll(50):
                continue
            topic, seq, payload = self.sub.recv_multipart()
            n = int.from_bytes(seq, "big")
            with self._lock:
                self.topics.add(topic)
                self.batches[n] = self.decoder.decode(payload)
                if self.first_live is None:
                    self.first_live = n

    def replay(self, start: int) -> list[int]:
        """Ask for every batch from `start`; store them; the seqs received, in order."""
        assert self.replay_endpoint is not None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.connect(self.replay_endpoint)
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        got = []
        try:
            while True:
                assert dealer.poll(10_000), "no replay answer within 10 s"
                empty, topic, seq, payload = dealer.recv_multipart()
                n = int.from_bytes(seq, "big", signed=True)
                if n == -1:
                    assert payload == b"" and topic == b""
                    return got
                got.append(n)
                with self._lock:
                    self.topics.add(topic)
                    self.batches[n] = self.decoder.decode(payload)
        finally:
            dealer.close(linger=0)

    def contiguous(self) -> list[KVEventBatch]:
        """The batches from seq 0 up to the first gap, in order."""
        with self._lock:
            out, n = [], 0
            while n in self.batches:
                out.append(self.batches[n])
                n += 1
            return out

    def events(self) -> list[Any]:
        return [e for b in self.contiguous() for e in b.events]

    def wait_connected(self) -> None:
        """ZMQ's slow joiner: a SUB sees only what is published after its subscription arrived.
        Wait until some batch (any) has come, which the caller makes happen."""
        wait_for("the subscriber's first batch", lambda: self.first_live is not None, 10)

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self.sub.close(linger=0)
        self.ctx.term()


@dataclass
class NodeView:
    """Which copies a node holds, from its events applied in order."""

    copies: dict[str, set[bytes]] = field(default_factory=lambda: {t: set() for t in MEDIA})
    stored: list[tuple[str, BlockStored]] = field(default_factory=list)  # every BlockStored, in order
    log: list[tuple[str, str, bytes]] = field(default_factory=list)  # ("+"/"-", tier, key)
    cleared: int = 0

    def apply(self, events: list[Any]) -> "NodeView":
        for e in events:
            if isinstance(e, AllBlocksCleared):
                self.cleared += 1
                for held in self.copies.values():
                    held.clear()
            elif isinstance(e, BlockStored):
                tier = tier_of(e)
                assert len(e.block_hashes) == 1
                key = e.block_hashes[0]
                assert key not in self.copies[tier], f"{key.hex()} stored twice on {tier}"
                self.copies[tier].add(key)
                self.stored.append((tier, e))
                self.log.append(("+", tier, key))
            else:
                assert isinstance(e, BlockRemoved)
                tier = tier_of(e)
                for key in e.block_hashes:
                    assert key in self.copies[tier], f"{key.hex()} removed from {tier}, where it was not"
                    self.copies[tier].discard(key)
                    self.log.append(("-", tier, key))
        return self

    def state(self) -> dict[str, set[bytes]]:
        return {t: set(k) for t, k in self.copies.items() if k}


def daemon_state(rows: list[dict[str, Any]]) -> dict[str, set[bytes]]:
    """The same model from the daemon's `ls` rows."""
    state: dict[str, set[bytes]] = {}
    for row in rows:
        for tier in row["tiers"]:
            state.setdefault(tier, set()).add(bytes.fromhex(row["key"]))
    return state
