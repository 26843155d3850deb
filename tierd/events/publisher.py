"""The ZMQ publisher: takes the feed's records on a thread of its own, batches and encodes them,
publishes each batch on a PUB socket and keeps the latest for replay on a ROUTER socket.

The sockets and the protocol are vLLM's `ZmqEventPublisher`'s, so its subscribers work unchanged:

- PUB (`--kv-events`): one multipart message per batch, (topic, seq, payload): the topic is
  the node id, `seq` the batch's sequence number as 8 bytes big-endian (0, 1, 2, ... from the
  daemon's start), `payload` a `KVEventBatch` (`tierd.events.wire`). The daemon binds; routers
  connect a SUB socket (subscribed to b"" or to a node's id).
- ROUTER (`--kv-events-replay`): a subscriber that missed batches (joined late, or saw a gap in
  `seq`) sends the first seq it wants as 8 bytes big-endian (from a DEALER: [b"", seq]; a REQ
  socket adds the empty frame itself) and gets back every batch held from there as
  [b"", topic, seq, payload] messages, then an end marker [b"", b"", seq -1, b""]. The buffer
  holds the latest batches up to `--kv-events-buffer` bytes; older ones are gone, and the
  replay starts at the oldest held (its seq says so).

Threads: the publisher thread owns the PUB socket and the replay thread the ROUTER socket
(zmq sockets are not shared between threads); they share only the replay buffer, under its
lock. Neither ever waits for the store, and the store never waits for them (`feed`). After the
first record of a batch the publisher waits `window` seconds (50 ms) for more, so many events
share one message and the thread wakes, and takes the interpreter from the store's loop, at most
20 times a second: `python -m bench.kv_events` measured about half the daemon's extra CPU per
chunk with 50 ms than with 10 ms. A router learns of a copy up to 50 ms after it appears.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from tierd.errors import ConfigError
from tierd.events import wire
from tierd.events.feed import CLEARED, REMOVED, STOP, STORED, EventFeed, Record
from tierd.events.replay import ReplayBuffer

log = logging.getLogger(__name__)

#: The end of a replay: seq -1, as vLLM's publisher sends it.
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class ZmqPublisher:
    """Publishes `feed`'s records until the feed is closed. `layouts` (the store's, by id) gives
    each stored chunk's block size (its chunk tokens; 0 while its layout is not registered)."""

    def __init__(self, feed: EventFeed, endpoint: str, *, replay_endpoint: str | None = None, topic: str = "",
                 buffer_bytes: int = 64 << 20, layouts: Mapping[str, Any] | None = None,
                 max_batch: int = 1024, window: float = 0.05, hwm: int = 100_000) -> None:
        import zmq  # only a daemon with --kv-events loads it

        self.feed = feed
        self.topic = topic.encode()
        self.layouts: Mapping[str, Any] = layouts if layouts is not None else {}
        self.max_batch = max_batch
        self.window = window
        self.buffer = ReplayBuffer(buffer_bytes)
        self.batches = 0  # published so far; the next batch's seq
        self.events = 0
        self.records = 0  # the feed's records published (removals next to each other share an event)
        self.replays = 0
        self._encoders: dict[str, wire.TierEncoder] = {}
        self._ctx = zmq.Context()
        self._sockets: list[Any] = []
        self._pub = self._bind(zmq.PUB, endpoint, "--kv-events", sndhwm=hwm)
        self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._replay = None
        self.replay_endpoint: str | None = None
        if replay_endpoint is not None:
            # ROUTER_MANDATORY: a replay that outruns a subscriber waits (up to SNDTIMEO) instead
            # of dropping batches in the middle of what it promised to send.
            self._replay = self._bind(zmq.ROUTER, replay_endpoint, "--kv-events-replay",
                                      router_mandatory=1, sndtimeo=5000)
            self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
        self._running = True
        self._publisher = threading.Thread(target=self._publish_loop, name="tierd-kv-events", daemon=True)
        self._replayer = threading.Thread(target=self._replay_loop, name="tierd-kv-replay", daemon=True)
        feed.on_close(self.close)

    def _bind(self, kind: int, endpoint: str, flag: str, **options: int) -> Any:
        import zmq

        sock = self._ctx.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 1000)  # at close, a second for the last batches to go out
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            for s in self._sockets:
                s.close(linger=0)
            self._ctx.term()
            raise ConfigError(f"{flag}={endpoint!r}: cannot bind it ({exc}); choose a free port") from None
        return sock

    def start(self) -> "ZmqPublisher":
        self._publisher.start()
        if self._replay is not None:
            self._replayer.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """After the feed's STOP: let the publisher send what was queued before it, then stop both
        threads and close the sockets."""
        if self._publisher.is_alive():
            self._publisher.join(timeout)
        self._running = False
        if self._replayer.is_alive():
            self._replayer.join(timeout)
        self._pub.close()
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "replay_endpoint": self.replay_endpoint, "topic": self.topic.decode(),
                "batches": self.batches, "events": self.events, "records_published": self.records,
                "replays": self.replays,
                "replay_buffer": {"batches": len(self.buffer), "bytes": self.buffer.nbytes,
                                  "first_seq": self.buffer.first_seq},
                **self.feed.stats()}

    # ------------------------------------------------------------------ the publisher thread

    def _publish_loop(self) -> None:
        queue, stop = self.feed.queue, False
        while not stop:
            first = queue.get()
            if first is STOP:
                break
            if self.window:
                time.sleep(self.window)  # let more arrive: one message for many events
            records = [first]
            while len(records) < self.max_batch and not queue.empty():
                r = queue.get_nowait()
                if r is STOP:
                    stop = True
                    break
                records.append(r)
            try:
                self._send(records)
            except Exception:  # a bug in encoding must not end publishing for the daemon's life
                log.exception("kv events: publishing a batch of %d failed", len(records))

    def _send(self, records: list[Record]) -> None:
        events = self._encode(records)
        payload = wire.batch(time.time(), events)
        seq = self.batches
        self._pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload), copy=False)
        self.buffer.append(seq, payload)
        self.batches += 1
        self.events += len(events)
        self.records += len(records)

    def _encode(self, records: list[Record]) -> list[bytes]:
        """Each record as one event, in order; consecutive removals from one tier share one
        BlockRemoved."""
        events: list[bytes] = []
        removed: list[bytes] = []
        removed_tier = ""
        for r in records:
            kind = r[0]
            if kind == REMOVED and (not removed or r[1] == removed_tier):
                removed.append(r[2])
                removed_tier = r[1]
                continue
            if removed:
                events.append(self._encoder(removed_tier).removed(removed))
                removed = []
            if kind == REMOVED:
                removed, removed_tier = [r[2]], r[1]
            elif kind == STORED:
                _, tier, key, parent, tokens, layout_id = r
                layout = self.layouts.get(layout_id)
                events.append(self._encoder(tier).stored(key, parent, tokens,
                                                         layout.chunk_tokens if layout is not None else 0))
            elif kind == CLEARED:
                events.append(wire.ALL_CLEARED)
        if removed:
            events.append(self._encoder(removed_tier).removed(removed))
        return events

    def _encoder(self, tier: str) -> wire.TierEncoder:
        enc = self._encoders.get(tier)
        if enc is None:
            enc = self._encoders[tier] = wire.TierEncoder(tier)
        return enc

    # ------------------------------------------------------------------ the replay thread

    def _replay_loop(self) -> None:
        import zmq

        sock = self._replay
        assert sock is not None
        while self._running:
            if not sock.poll(100):  # a tenth of a second: how long close() may wait for this thread
                continue
            frames = sock.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("kv events: a replay request must be [b'', 8-byte start seq]; got %d frames", len(frames))
                if len(frames) >= 1:
                    self._reply(sock, zmq, frames[0], [(b"", END_SEQ, b"")])
                continue
            client, start = frames[0], int.from_bytes(frames[2], "big")
            held = self.buffer.since(start)
            self.replays += 1
            self._reply(sock, zmq, client, [(self.topic, seq.to_bytes(8, "big"), payload) for seq, payload in held]
                        + [(b"", END_SEQ, b"")])

    @staticmethod
    def _reply(sock: Any, zmq: Any, client: bytes, messages: list[tuple[bytes, bytes, bytes]]) -> None:
        try:
            for topic, seq, payload in messages:
                sock.send_multipart((client, b"", topic, seq, payload), copy=False)
        except zmq.ZMQError as exc:  # the subscriber went away or stopped reading: its loss
            log.warning("kv events: replay to a subscriber stopped: %s", exc)
