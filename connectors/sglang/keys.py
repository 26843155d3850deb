"""SGLang page keys → tierd chunk keys.

SGLang names each page by a SHA-256 hex string chained over the previous page's hash and this
page's token ids (`sglang.srt.mem_cache.utils.get_hash_str`), optionally seeded by a request
namespace (`extra_key`/`cache_salt`). That names the *tokens*, not the KV: it carries neither
the model, the dtype, the tensor-parallel shard, nor the pipeline stage. So a tierd key is

    blake2b-128(seed || page hash),   seed = blake2b-128(tag || tierd seed(namespace, layout) || shard)

where tierd's seed (`tierd.keys.seed_key`) covers the model, dtype, layers, heads, head dim,
TP rank/size and page size, and `shard` names the pipeline stage. Two engines share a page only
when all of that matches; the prefix chain itself is SGLang's, and with it what SGLang's chain
names besides tokens: the request's extra key (with its LoRA id), its cache salt, and its
images (in the token ids). When SGLang serves LoRA adapters, the seed also carries a digest of
their content (`identity.adapters_tag`), which SGLang's ids lack; without LoRA it is unchanged.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from tierd.errors import InvalidArgumentError
from tierd.keys import KEY_BYTES, seed_key
from tierd.layout import Layout

_TAG = b"tierd-sglang-pages-v1\x00"


class PageKeys:
    """Maps SGLang page hashes to tierd keys for one layout, namespace and shard. Pure: the
    same inputs give the same keys in every process and on every machine."""

    def __init__(self, layout: Layout, namespace: str, shard_tag: str, adapters: str = "") -> None:
        material = _TAG + seed_key(layout, namespace) + b"\x00" + shard_tag.encode()
        if adapters:
            material += b"\x00adapters\x00" + adapters.encode()
        self.seed = hashlib.blake2b(material, digest_size=KEY_BYTES).digest()

    def __call__(self, page_hashes: Sequence[str]) -> list[bytes]:
        out = []
        for h in page_hashes:
            if not isinstance(h, str) or not h:
                raise InvalidArgumentError(f"SGLang page key {h!r}: expected a non-empty hash string")
            d = hashlib.blake2b(self.seed, digest_size=KEY_BYTES)
            d.update(h.encode())
            out.append(d.digest())
        return out
