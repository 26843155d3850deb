"""KV events from a real vLLM engine's saves: the connector passes each chunk's token ids and its
parent key with the put, so the daemon's BlockStored events name the prompt's own tokens, which a
router can match without tierd's key function. Uses the pooled engine of test_connector.py (the
same configuration), with a daemon publishing events on the socket that engine uses."""
from __future__ import annotations

from tests.e2e.test_connector import BLOCK, CHUNK, LONG, kv_config
from tests.events.subscriber import NodeView, Subscriber, endpoints
from tests.waiting import wait_for


def test_a_real_engines_saves_carry_the_prompts_tokens_and_chain(test_model_dir, engines, daemon_factory):
    d = daemon_factory(extra=("--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0"))
    sub = Subscriber(*endpoints(d.banner))
    try:
        engines.run(test_model_dir, [LONG], kv_transfer_config=kv_config(d.socket), sequential=True,
                    enable_prefix_caching=False, single_process=True, block_size=BLOCK)
        n = len(LONG) // CHUNK  # five full chunks; the tail is not stored
        wait_for("the saves' events", lambda: sub.replay(0) and len(NodeView().apply(sub.events()).stored) >= n, 30)
        stored = [e for tier, e in NodeView().apply(sub.events()).stored if tier == "dram"]
        assert [e.token_ids for e in stored] == [LONG[i * CHUNK : (i + 1) * CHUNK] for i in range(n)]
        assert [e.parent_block_hash for e in stored] == [None] + [e.block_hashes[0] for e in stored[:-1]]
        assert {e.block_size for e in stored} == {CHUNK}
    finally:
        sub.close()
