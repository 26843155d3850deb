"""KV events: what this node stores and drops, per tier, published for cache-aware routers.

A router that knows which node holds a prompt's prefix, and in which tier, can send the request
there. The daemon tells it in vLLM's own KV-event format (`KVEventBatch` of `BlockStored`,
`BlockRemoved`, `AllBlocksCleared`) over ZMQ, so a router written for vLLM's events reads
tierd's unchanged. Turned on by `--kv-events tcp://HOST:PORT` (and `--kv-events-replay` for
the replay socket); off, none of this is loaded and the store's event points cost one `is None`.

    feed.py       the store's side: its event points hand records to a queue, never blocking
    wire.py       the wire format, encoded with msgpack alone; each tier's medium and locality
    publisher.py  the thread that batches, encodes and publishes, and the replay thread
    replay.py     the latest batches, bounded in bytes, for subscribers that missed some

What a block is: one chunk. Its hash is the chunk's 16-byte key; its parent the key of the
chunk before it in its prompt (None for a prompt's first chunk, and for chunks whose tokens and
parent were not given: restored from disk at start, or put by a client that did not pass them);
`token_ids` are the chunk's tokens as the connector passed them with the put, `block_size` the
layout's chunk tokens.
"""
from __future__ import annotations

from typing import Any, Mapping

from tierd.events.feed import EventFeed


def open_kv_events(endpoint: str, *, replay_endpoint: str | None, topic: str, buffer_bytes: int,
                   layouts: Mapping[str, Any]) -> EventFeed:
    """A feed whose records are published on `endpoint` (bound now: a taken port stops the start
    with a ConfigError), by a publisher thread that stops when the feed is closed."""
    from tierd.events.publisher import ZmqPublisher

    feed = EventFeed()
    feed.publisher = ZmqPublisher(feed, endpoint, replay_endpoint=replay_endpoint, topic=topic,
                                  buffer_bytes=buffer_bytes, layouts=layouts).start()
    return feed


__all__ = ["EventFeed", "open_kv_events"]
