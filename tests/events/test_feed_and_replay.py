"""The two bounded parts of KV events: the feed never blocks the store nor grows past its limit,
and the replay buffer holds the latest batches within its bytes."""
from __future__ import annotations

from tierd.events.feed import CLEARED, REMOVED, STOP, STORED, EventFeed
from tierd.events.replay import ReplayBuffer


def test_feed_records_in_order_and_drops_past_its_limit():
    feed = EventFeed(limit=3)
    feed.stored("dram", b"k" * 16, "L", None, b"\x90")
    feed.removed("nvme", b"k" * 16)
    feed.cleared()
    feed.removed("dram", b"x" * 16)  # the consumer is 3 behind: dropped, counted
    assert feed.stats() == {"recorded": 3, "dropped": 1, "queued": 3}
    got = [feed.queue.get_nowait()[0] for _ in range(3)]
    assert got == [STORED, REMOVED, CLEARED]
    feed.removed("dram", b"y" * 16)  # room again
    assert feed.recorded == 4


def test_closing_the_feed_stops_its_consumer_once_and_ignores_later_records():
    feed, closed = EventFeed(), []
    feed.on_close(lambda: closed.append(1))
    feed.close()
    feed.close()
    feed.cleared()
    assert closed == [1] and feed.queue.get_nowait() is STOP and feed.queue.empty()


def test_replay_buffer_keeps_the_latest_batches_within_its_bytes():
    buf = ReplayBuffer(max_bytes=100)
    for seq in range(10):
        buf.append(seq, bytes(30))
    assert [s for s, _ in buf.since(0)] == [7, 8, 9] and buf.nbytes == 90  # the oldest went first
    assert [s for s, _ in buf.since(8)] == [8, 9]
    assert buf.since(10) == [] and buf.first_seq == 7
    buf.append(10, bytes(101))  # larger than the whole buffer: not kept, nor are the others
    assert buf.since(0) == [] and buf.nbytes == 0


def test_replay_from_a_full_buffer_starts_at_the_oldest_batch_held():
    """A subscriber asking for batches the buffer no longer holds gets the oldest held onwards,
    in order, then the end marker: the first seq it sees tells it what was lost."""

    from tests.events.subscriber import Subscriber
    from tests.waiting import wait_for
    from tierd.events.publisher import ZmqPublisher
    from tierd.events.wire import keep_tokens

    feed = EventFeed()
    pub = ZmqPublisher(feed, "tcp://127.0.0.1:0", replay_endpoint="tcp://127.0.0.1:0", topic="n",
                       buffer_bytes=64 << 10, window=0).start()
    sub = Subscriber(pub.endpoint, pub.replay_endpoint)
    try:
        for i in range(200):  # ~1.4 KB a batch: the 64 KiB buffer holds the last ~45
            feed.stored("dram", i.to_bytes(16, "big"), "L", None, keep_tokens(range(256)))
            wait_for("the batch", lambda: pub.batches == i + 1, 10, interval=0.001)
        got = sub.replay(0)
        assert 0 < got[0] == pub.buffer.first_seq and got == list(range(got[0], 200))
        assert pub.buffer.nbytes <= 64 << 10
        assert sub.replay(500) == []  # beyond the last: only the end marker
    finally:
        sub.close()
        feed.close()
    assert not pub._publisher.is_alive() and not pub._replayer.is_alive()
