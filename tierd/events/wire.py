"""vLLM's KV-event wire format, written with msgpack alone (the daemon never imports vLLM).

What a subscriber decodes with `msgspec.msgpack.Decoder(vllm.distributed.kv_events.KVEventBatch)`:

    KVEventBatch   a msgpack array [ts (float, seconds since the epoch), [event, ...], data_parallel_rank]
    BlockStored    a map {"type": "BlockStored", "block_hashes": [key], "parent_block_hash": key | nil,
                   "token_ids": [int, ...], "block_size": int, "lora_id": nil, "medium": str,
                   "lora_name": nil, "locality": str, "ownership": str}
    BlockRemoved   a map {"type": "BlockRemoved", "block_hashes": [key], "medium": str, "locality": str,
                   "ownership": str}
    AllBlocksCleared  {"type": "AllBlocksCleared"}

(vLLM's events are msgspec structs tagged by their class name in the field "type", encoded as
maps with the fields left at their defaults omitted; the batch is an array-like struct.) A
block hash is the chunk's 16-byte key as msgpack bin (vLLM's `ExternalBlockHash` is
`bytes | int`). `data_parallel_rank` is always 0: one daemon is one publisher.

Media: each tier is told apart three ways, so a router written for vLLM's own events needs
nothing new and one that knows tierd can be exact:

    tier     medium     locality   ownership
    dram     "CPU"      "LOCAL"    "dram"
    nvme     "STORAGE"  "LOCAL"    "nvme"
    object   "STORAGE"  "REMOTE"   "object"

`medium` and `locality` are vLLM's own values (`MEDIUM_CPU`/`MEDIUM_STORAGE`, `Locality`) as
its offloading tiers publish them; `ownership` is vLLM's "secondary offloading tier
identifier", here tierd's tier name. The node is the message's ZMQ topic (`--node-id`).

Events are spliced from bytes made once per tier, because the publisher thread encodes every
event and shares the interpreter with the store's loop: a splice is a few joins, where packing
a dict per event would be several times the work. For the same reason the loop keeps token ids
as 4-byte integers (`keep_tokens`) and the publisher's thread writes them out with numpy.
"""
from __future__ import annotations

from array import array
from typing import Sequence

import msgpack
import numpy as np

#: tier name -> (medium, locality), vLLM's values.
MEDIA: dict[str, tuple[str, str]] = {
    "dram": ("CPU", "LOCAL"),
    "nvme": ("STORAGE", "LOCAL"),
    "object": ("STORAGE", "REMOTE"),
}

#: A token-id list nobody gave (a chunk restored from disk, or put without its tokens).
NO_TOKENS = msgpack.packb([])
#: How a chunk's token ids are kept between its put and its events: unsigned 32-bit, native order
#: (`array("I")`, which also checks each is an integer in range), 4 bytes a token.
TOKEN_TYPECODE = "I"
#: A msgpack uint32 (0xce, then 4 bytes big-endian): each token id on the wire, 5 bytes.
_UINT32 = np.dtype([("tag", "u1"), ("value", ">u4")])

_pack = msgpack.Packer(use_bin_type=True).pack
_PARENT, _TOKENS, _BLOCK_SIZE = map(_pack, ("parent_block_hash", "token_ids", "block_size"))


def media(tier: str) -> tuple[str, str]:
    """(medium, locality) of a tier; an unknown tier (a test's) is STORAGE, LOCAL."""
    return MEDIA.get(tier, ("STORAGE", "LOCAL"))


def _fields(**fields: object) -> bytes:
    return b"".join(_pack(k) + _pack(v) for k, v in fields.items())


def _map_header(n: int) -> bytes:
    return msgpack.Packer().pack_map_header(n)


def _array_header(n: int) -> bytes:
    return msgpack.Packer().pack_array_header(n)


class TierEncoder:
    """The events of one tier: its constant fields packed once, the rest spliced per event."""

    __slots__ = ("_stored_head", "_removed_head", "tier")

    def __init__(self, tier: str) -> None:
        self.tier = tier
        medium, locality = media(tier)
        where = _fields(medium=medium, locality=locality, ownership=tier)
        # BlockStored: type, 3 media fields, lora_id, lora_name, then 4 per event (hashes,
        # parent, tokens, block size): 10 fields.
        self._stored_head = (_map_header(10) + _fields(type="BlockStored") + where
                             + _fields(lora_id=None, lora_name=None) + _pack("block_hashes") + _array_header(1))
        # BlockRemoved: type, 3 media fields, block_hashes: 5 fields.
        self._removed_head = _map_header(5) + _fields(type="BlockRemoved") + where + _pack("block_hashes")

    def stored(self, key: bytes, parent: bytes | None, tokens: array | bytes | None, block_size: int) -> bytes:
        """A BlockStored of one chunk; `tokens` its token ids as kept (`TOKEN_TYPECODE`), or None."""
        return b"".join((self._stored_head, _pack(key), _PARENT, _pack(parent),
                         _TOKENS, encode_tokens(tokens) if tokens else NO_TOKENS, _BLOCK_SIZE, _pack(block_size)))

    def removed(self, keys: Sequence[bytes]) -> bytes:
        """One BlockRemoved of several chunks of this tier."""
        return b"".join((self._removed_head, _array_header(len(keys)), *map(_pack, keys)))


#: AllBlocksCleared: every copy this node held is gone (or, at start, not yet known).
ALL_CLEARED = _map_header(1) + _fields(type="AllBlocksCleared")


def batch(ts: float, events: Sequence[bytes]) -> bytes:
    """A KVEventBatch of encoded events."""
    return b"".join((_array_header(3), _pack(ts), _array_header(len(events)), *events, _pack(0)))


def keep_tokens(tokens: Sequence[int]) -> array:
    """A chunk's token ids as kept until its events (4 bytes each); TypeError or OverflowError
    for anything but integers from 0 to 2**32-1 (the check costs nothing extra: `array` does it)."""
    return array(TOKEN_TYPECODE, tokens)


def encode_tokens(kept: array | bytes) -> bytes:
    """Kept token ids as a msgpack array, on the publisher's thread: a numpy copy, not a Python
    loop (every id as a uint32, 5 bytes; any msgpack decoder reads it as the int it is)."""
    ids = np.frombuffer(kept, dtype=np.uint32)
    out = np.empty(len(ids), dtype=_UINT32)
    out["tag"] = 0xCE
    out["value"] = ids
    return _array_header(len(ids)) + out.tobytes()
