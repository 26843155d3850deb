"""tierd's KV-event encoder against vLLM's own types: what `tierd.events.wire` writes decodes
with `msgspec.msgpack.Decoder(vllm.distributed.kv_events.KVEventBatch)` into the events meant,
and says the same as vLLM's encoder says for those events."""
from __future__ import annotations

import msgpack
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

from tierd.events import wire

DECODE = msgspec.msgpack.Decoder(KVEventBatch).decode
VLLM_ENCODE = msgspec.msgpack.Encoder().encode
K1, K2, K3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


def test_every_event_kind_decodes_with_vllms_types_and_matches_its_encoder():
    dram, nvme, obj = wire.TierEncoder("dram"), wire.TierEncoder("nvme"), wire.TierEncoder("object")
    tokens = list(range(70000, 70256))  # beyond 16 bits: msgpack's wider ints
    payload = wire.batch(1234.5, [
        wire.ALL_CLEARED,
        dram.stored(K1, None, wire.keep_tokens(tokens), 256),
        nvme.stored(K2, K1, None, 0),
        obj.stored(K3, K2, wire.keep_tokens([1, 2]), 2),
        dram.removed([K1, K2]),
        obj.removed([K3]),
    ])
    batch = DECODE(payload)
    want = KVEventBatch(ts=1234.5, data_parallel_rank=0, events=[
        AllBlocksCleared(),
        BlockStored(block_hashes=[K1], parent_block_hash=None, token_ids=tokens, block_size=256, lora_id=None,
                    medium="CPU", lora_name=None, locality="LOCAL", ownership="dram"),
        BlockStored(block_hashes=[K2], parent_block_hash=K1, token_ids=[], block_size=0, lora_id=None,
                    medium="STORAGE", lora_name=None, locality="LOCAL", ownership="nvme"),
        BlockStored(block_hashes=[K3], parent_block_hash=K2, token_ids=[1, 2], block_size=2, lora_id=None,
                    medium="STORAGE", lora_name=None, locality="REMOTE", ownership="object"),
        BlockRemoved(block_hashes=[K1, K2], medium="CPU", locality="LOCAL", ownership="dram"),
        BlockRemoved(block_hashes=[K3], medium="STORAGE", locality="REMOTE", ownership="object"),
    ])
    assert batch == want
    # the same message as vLLM's own encoder writes, field for field (map order aside)
    assert msgpack.unpackb(payload) == msgpack.unpackb(VLLM_ENCODE(want))


def test_the_three_tiers_are_told_apart_by_medium_and_locality():
    assert len({wire.media(t) for t in ("dram", "nvme", "object")}) == 3
    assert wire.media("dram")[0] == "CPU" and wire.media("nvme")[0] == wire.media("object")[0] == "STORAGE"


@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), parent=st.none() | st.binary(min_size=16, max_size=16),
       tokens=st.lists(st.integers(0, 2**32 - 1), max_size=300), tier=st.sampled_from(["dram", "nvme", "object"]),
       removed=st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=40))
def test_any_keys_tokens_and_parents_round_trip(key, parent, tokens, tier, removed):
    enc = wire.TierEncoder(tier)
    batch = DECODE(wire.batch(0.0, [enc.stored(key, parent, wire.keep_tokens(tokens), len(tokens)),
                                    enc.removed(removed)]))
    stored, gone = batch.events
    assert (stored.block_hashes, stored.parent_block_hash, stored.token_ids, stored.ownership) == (
        [key], parent, tokens, tier)
    assert gone.block_hashes == removed and gone.medium == wire.media(tier)[0]
