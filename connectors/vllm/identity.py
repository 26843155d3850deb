"""What, besides its tokens, decides a vLLM request's KV, per tierd chunk.

vLLM's own prefix cache puts extra keys into each block hash
(`vllm/v1/core/kv_cache_utils.py`, `generate_block_hash_extra_keys`): the LoRA adapter
(name, path), every multimodal item overlapping the block (its identifier and its offset from
the block's start), the request's `cache_salt` (first block only) and a hash of the block's
prompt embeddings. A tierd chunk spans several vLLM blocks, and tierd's keys live longer and
travel further than vLLM's (NVMe, a shared bucket, other engines, restarts), so the connector
derives the same inputs per chunk, with two changes:

- the adapter is named by its name and a fingerprint of its files' content
  (`tierd.fingerprint.fingerprint_path`), not its path: an adapter rewritten in place gets new
  keys, and the same adapter at another path on another node shares them. Fingerprints are
  cached per path while every file's size, mtime and inode stay the same;
- each multimodal item is keyed by its identifier, its offset from the chunk's start and its
  length, in every chunk it overlaps.

Requests whose KV tierd cannot key are neither loaded nor saved (`RequestIdentities.of`
answers None) and counted per reason: prompt embeddings (their token ids are placeholders; tierd
does not hash embedding tensors), an adapter whose files cannot be read here, and a multimodal
item without an identifier.

Residual gap: an adapter rewritten while vLLM still holds the old weights in memory is keyed by
the new files, the KV by the old weights, until vLLM reloads it (`load_inplace`, or eviction
from its adapter cache).
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tierd.fingerprint import fingerprint_path
from tierd.keys import chunk_keys, encode_extras
from tierd.layout import Layout

if TYPE_CHECKING:
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

#: Reasons a request is not cached, as counted.
PROMPT_EMBEDS = "prompt_embeds"
LORA_UNREADABLE = "lora_unreadable"
MM_NO_IDENTIFIER = "mm_without_identifier"
#: An adapter directory with more entries than this is refused rather than walked (a path
#: pointing at a model hub cache or a home directory by mistake).
MAX_ADAPTER_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    """The inputs besides tokens that change a request's KV.

    `lora` is (adapter name, content fingerprint); `mm` lists (identifier, offset, length) of
    the multimodal items in prompt order; `salt` is vLLM's `cache_salt` (None when unset or
    empty, as vLLM treats it)."""

    lora: tuple[str, str] | None = None
    salt: str | None = None
    mm: tuple[tuple[str, int, int], ...] = ()

    def extras(self, chunk_tokens: int, count: int) -> list[bytes | None] | None:
        """Chunk i's extra bytes for i < count (None where nothing but tokens matters), or None
        when nothing does for any chunk (keys are then exactly the tokens' keys)."""
        if self.lora is None and self.salt is None and not self.mm:
            return None
        out: list[bytes | None] = []
        for i in range(count):
            start, end = i * chunk_tokens, (i + 1) * chunk_tokens
            items: list[tuple[str | int, ...]] = []
            if self.lora is not None:
                items.append(("lora", *self.lora))
            for ident, offset, length in self.mm:
                if offset < end and offset + length > start:  # overlaps (vLLM's rule for zero length too)
                    items.append(("mm", ident, offset - start, length))
            if i == 0 and self.salt is not None:
                items.append(("cache_salt", self.salt))
            out.append(encode_extras(items))
        return out

    def chunk_keys(self, layout: Layout, tokens: Sequence[int], namespace: str) -> list[bytes]:
        """Keys of the full chunks of `tokens` under this identity."""
        count = len(tokens) // layout.chunk_tokens
        return chunk_keys(layout, tokens, namespace, extras=self.extras(layout.chunk_tokens, count))


class RequestIdentities:
    """Derives each request's identity for one scheduler; keeps the adapter fingerprints and the
    count of requests refused (`refused`, by reason). Called on vLLM's scheduler thread only."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self._adapters: dict[str, tuple[tuple[Any, ...], str]] = {}  # path -> (file signature, fingerprint)

    def of(self, request: "Request") -> RequestIdentity | None:
        """The request's identity, or None (counted and logged) if its KV cannot be keyed."""
        identity, reason, why = self._derive(request)
        if identity is None:
            self.refused[reason] += 1
            n = self.refused[reason]
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th ...: every kind is seen, the log stays short
                log.warning("tierd: request %s is neither loaded nor saved: %s (%s: %d requests so far)",
                            request.request_id, why, reason, n)
        return identity

    def current(self, request: "Request") -> RequestIdentity | None:
        """Like `of`, not counted: for a request already counted whose inputs may have grown
        (a streaming session appends prompt segments and their multimodal items)."""
        return self._derive(request)[0]

    def _derive(self, request: "Request") -> tuple[RequestIdentity | None, str, str]:
        if getattr(request, "prompt_embeds", None) is not None or request.prompt_token_ids is None:
            return None, PROMPT_EMBEDS, "its prompt is given as embeddings"
        lora = None
        lora_request = getattr(request, "lora_request", None)
        if lora_request:
            fp = self.adapter_fingerprint(str(lora_request.lora_path))
            if fp is None:
                return None, LORA_UNREADABLE, (f"LoRA adapter {lora_request.lora_name!r} at {lora_request.lora_path!r} "
                                               "cannot be read here to fingerprint it")
            lora = (str(lora_request.lora_name), fp)
        mm: list[tuple[str, int, int]] = []
        for feature in getattr(request, "mm_features", None) or ():
            ident = getattr(feature, "identifier", None)
            if not isinstance(ident, str) or not ident:
                return None, MM_NO_IDENTIFIER, f"a {getattr(feature, 'modality', '?')} item has no identifier"
            pos = feature.mm_position
            mm.append((ident, int(pos.offset), int(pos.length)))
        mm.sort(key=lambda m: (m[1], m[2], m[0]))
        return RequestIdentity(lora, getattr(request, "cache_salt", None) or None, tuple(mm)), "", ""

    def adapter_fingerprint(self, path: str) -> str | None:
        """The content fingerprint of the adapter at `path` (a local path, or a hub id already in
        the local hub cache), or None if it cannot be read."""
        local = _local_adapter_path(path)
        if local is None:
            return None
        try:
            signature = _signature(local)
            cached = self._adapters.get(str(local))
            if cached is not None and cached[0] == signature:
                return cached[1]
            fp = fingerprint_path(local)
        except OSError as exc:
            log.warning("tierd: cannot fingerprint LoRA adapter %s: %s", path, exc)
            return None
        self._adapters[str(local)] = (signature, fp)
        return fp


def _local_adapter_path(path: str) -> Path | None:
    """`path` resolved as vLLM resolves adapter paths, without downloading anything."""
    p = Path(os.path.expanduser(path))
    if p.exists():
        return p.resolve()
    if os.path.isabs(path) or path.startswith("~"):
        return None
    try:  # a hub id: the snapshot vLLM's worker downloaded, if it is in the local cache yet
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path, local_files_only=True)).resolve()
    except Exception:  # not cached (yet), not a valid id, no huggingface_hub: not keyable now
        return None


def _signature(root: Path) -> tuple[Any, ...]:
    """What changes when any file under `root` is rewritten: each regular file's relative path,
    size, mtime and inode (following symlinks, as hub snapshots use them)."""
    files = [root] if root.is_file() else sorted(p for p in itertools.islice(root.rglob("*"), MAX_ADAPTER_ENTRIES + 1)
                                                  if p.is_file())
    if len(files) > MAX_ADAPTER_ENTRIES:
        raise OSError(f"more than {MAX_ADAPTER_ENTRIES} entries under {root}: not an adapter directory")
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f.relative_to(root)) if f != root else "", st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))
    if not out:
        raise OSError(f"no files under {root}")
    return tuple(out)
