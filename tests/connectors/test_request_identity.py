"""Request identity in the vLLM connector's keys (issue 20, item 1), with vLLM's own objects:
`vllm.v1.request.Request`, `MultiModalFeatureSpec`/`PlaceholderRange`, `LoRARequest`, and
vLLM's block hasher as the reference for what must tell two requests apart.

On the code before this change every test here fails: `connectors.vllm.identity` does not exist
(ImportError); the scheduler-side tests, rewritten against the old scheduler, fail as each
docstring says (the old scheduler keyed `prompt_token_ids` only)."""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.lora.request import LoRARequest
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm.utils.hashing import sha256_cbor
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.request import Request

from connectors.vllm.config import ConnectorConfig
from connectors.vllm.identity import RequestIdentities, RequestIdentity
from connectors.vllm.scheduler import SchedulerSide
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

BLOCK, CHUNK = 16, 32  # a chunk is two vLLM blocks
LAYOUT = Layout("m", "float32", 2, 2, 8, chunk_tokens=CHUNK)
TOKENS = [(7 * i) % 500 + 3 for i in range(130)]  # four full chunks and a tail
_ids = itertools.count()


def _adapter(path: Path, seed: int) -> Path:
    """A PEFT-format LoRA directory (config + safetensors-named weights): its bytes are what counts."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    (path / "adapter_model.safetensors").write_bytes(np.random.default_rng(seed).bytes(4096))
    return path


def _image(ident: str, offset: int, length: int) -> MultiModalFeatureSpec:
    return MultiModalFeatureSpec(data=None, modality="image", identifier=ident,
                                 mm_position=PlaceholderRange(offset=offset, length=length))


def _request(tokens: list[int] | None = TOKENS, *, lora: LoRARequest | None = None, salt: str | None = None,
             mm: list[MultiModalFeatureSpec] | None = None, embeds: torch.Tensor | None = None) -> Request:
    init_none_hash(sha256_cbor)
    return Request(f"r{next(_ids)}", None if tokens is None else list(tokens), SamplingParams(max_tokens=4), None,
                   prompt_embeds=embeds, mm_features=mm, lora_request=lora, cache_salt=salt,
                   block_hasher=get_request_block_hasher(BLOCK, sha256_cbor))


def _keys(ids: RequestIdentities, req: Request) -> list[bytes]:
    identity = ids.of(req)
    assert identity is not None
    return identity.chunk_keys(LAYOUT, req.prompt_token_ids, "default")


# ------------------------------------------------------------------ keys against vLLM's own


def test_keys_tell_requests_apart_exactly_where_vllms_block_hashes_do(tmp_path):
    """For every pair of variants of one prompt and every chunk: tierd's chunk keys are equal
    if and only if vLLM's hash of the chunk's last block is equal. So tierd keys everything
    vLLM's prefix cache keys (adapter, images and their positions, salt), at chunk granularity."""
    a, b = _adapter(tmp_path / "a", 1), _adapter(tmp_path / "b", 2)
    variants = {
        "plain": _request(),
        "lora-a": _request(lora=LoRARequest("a", 1, str(a))),
        "lora-b": _request(lora=LoRARequest("b", 2, str(b))),
        "img-x@40": _request(mm=[_image("x", 40, 20)]),
        "img-y@40": _request(mm=[_image("y", 40, 20)]),
        "img-x@44": _request(mm=[_image("x", 44, 20)]),
        "img-x@40+z@70": _request(mm=[_image("x", 40, 20), _image("z", 70, 30)]),
        "img-x@100": _request(mm=[_image("x", 100, 8)]),
        "salt-s": _request(salt="s"),
        "salt-t": _request(salt="t"),
        "salt-s+lora-a": _request(salt="s", lora=LoRARequest("a", 1, str(a))),
    }
    ids = RequestIdentities()
    keys = {name: _keys(ids, r) for name, r in variants.items()}
    per_chunk = CHUNK // BLOCK
    for (n1, r1), (n2, r2) in itertools.combinations(variants.items(), 2):
        for i in range(len(TOKENS) // CHUNK):
            same_vllm = r1.block_hashes[(i + 1) * per_chunk - 1] == r2.block_hashes[(i + 1) * per_chunk - 1]
            assert (keys[n1][i] == keys[n2][i]) == same_vllm, (n1, n2, i)
    assert keys["plain"] == chunk_keys(LAYOUT, TOKENS)  # nothing but tokens: today's keys


def test_an_image_changes_the_keys_from_its_first_chunk_on():
    ids = RequestIdentities()
    x, y = _keys(ids, _request(mm=[_image("x", 40, 40)])), _keys(ids, _request(mm=[_image("y", 40, 40)]))
    assert x[0] == y[0] == chunk_keys(LAYOUT, TOKENS)[0]  # tokens 0..31: before the image
    assert all(p != q for p, q in zip(x[1:], y[1:]))
    # an item spanning chunks 1 and 2 is in both chunks' extras, with its offset from each start
    extras = RequestIdentity(mm=(("x", 40, 40),)).extras(CHUNK, 4)
    assert extras[0] is None and extras[3] is None and extras[1] != extras[2]


def test_the_same_image_at_another_length_is_another_key():
    """Stricter than vLLM (which keys identifier and offset): the length is part of the key."""
    ids = RequestIdentities()
    assert _keys(ids, _request(mm=[_image("x", 40, 20)]))[1] != _keys(ids, _request(mm=[_image("x", 40, 21)]))[1]


def test_the_salt_changes_every_key_and_an_empty_salt_is_none():
    ids = RequestIdentities()
    s, t, plain = _keys(ids, _request(salt="s")), _keys(ids, _request(salt="t")), _keys(ids, _request())
    assert len(set(s) | set(t) | set(plain)) == 3 * len(plain)
    assert _keys(ids, _request(salt="")) == plain  # vLLM treats "" as no salt too


def test_an_adapter_is_keyed_by_its_name_and_content_not_its_path(tmp_path):
    a = _adapter(tmp_path / "a", 1)
    copy = tmp_path / "elsewhere" / "a"
    shutil.copytree(a, copy)
    ids = RequestIdentities()
    ka = _keys(ids, _request(lora=LoRARequest("a", 1, str(a))))
    assert _keys(ids, _request(lora=LoRARequest("a", 7, str(copy)))) == ka  # same bytes: shared
    assert _keys(ids, _request(lora=LoRARequest("other-name", 1, str(a)))) != ka  # vLLM keys the name too
    # rewritten in place, same size: new keys (the fingerprint is recomputed, not the cached one reused)
    weights = a / "adapter_model.safetensors"
    weights.write_bytes(np.random.default_rng(99).bytes(weights.stat().st_size))
    assert all(p != q for p, q in zip(_keys(ids, _request(lora=LoRARequest("a", 1, str(a)))), ka))
    assert all(p != q for p, q in zip(_keys(ids, _request(lora=LoRARequest("a", 1, str(a)))), chunk_keys(LAYOUT, TOKENS)))


@pytest.mark.parametrize("path", ["/nonexistent/adapter", "no-such-org/no-such-adapter-in-the-hub-cache"])
def test_an_adapter_that_cannot_be_read_is_refused(path, caplog):
    ids = RequestIdentities()
    with caplog.at_level(logging.WARNING, logger="connectors.vllm.identity"):
        assert ids.of(_request(lora=LoRARequest("x", 1, path))) is None
    assert ids.refused == {"lora_unreadable": 1}
    assert "neither loaded nor saved" in caplog.text and "lora_unreadable: 1 requests so far" in caplog.text


def test_an_item_without_identifier_is_refused():
    ids = RequestIdentities()
    feature = _image("x", 4, 4)
    req = _request(mm=[feature])
    feature.identifier = None  # type: ignore[assignment]  # (vLLM's own block hasher asserts on it)
    assert ids.of(req) is None and ids.refused == {"mm_without_identifier": 1}


# ------------------------------------------------------------------ the scheduler side, real daemon


def _step(*new: tuple[Request, list[int]]) -> SimpleNamespace:
    """vLLM's SchedulerOutput as the scheduler side reads it: each request scheduled whole from token 0."""
    return SimpleNamespace(
        scheduled_new_reqs=[SimpleNamespace(req_id=r.request_id, block_ids=(blocks,), num_computed_tokens=0,
                                            prompt_token_ids=r.prompt_token_ids) for r, blocks in new],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[], resumed_req_ids=set(), new_block_ids=[], num_computed_tokens=[]),
        num_scheduled_tokens={r.request_id: r.num_prompt_tokens for r, _ in new},
        preempted_req_ids=set(),
    )


def _store(socket: str, keys: list[bytes]) -> None:
    with Client.connect(socket) as c:
        c.put_chunks(LAYOUT, keys, [bytes(LAYOUT.chunk_bytes)] * len(keys))


def test_adapter_b_gets_no_hit_from_adapter_as_chunks(daemon, tmp_path):
    """Old code: A's chunks were saved under its tokens' keys alone (the first key assertion
    fails), so B, a base-model request and a salted one would each be offered A's 128 tokens."""
    a, b = _adapter(tmp_path / "a", 1), _adapter(tmp_path / "b", 2)
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=CHUNK, load_plan=False), LAYOUT, BLOCK, None)
    ra = _request(lora=LoRARequest("a", 1, str(a)))
    assert s.get_num_new_matched_tokens(ra, 0) == (0, False)
    (save,) = s.build_connector_meta(_step((ra, list(range(9))))).saves
    assert save.keys != chunk_keys(LAYOUT, TOKENS)[:4]
    _store(daemon.socket, save.keys)
    assert s.get_num_new_matched_tokens(_request(lora=LoRARequest("a", 1, str(a))), 0) == (4 * CHUNK, False)
    assert s.get_num_new_matched_tokens(_request(lora=LoRARequest("b", 2, str(b))), 0) == (0, False)
    assert s.get_num_new_matched_tokens(_request(), 0) == (0, False)
    assert s.get_num_new_matched_tokens(_request(salt="s"), 0) == (0, False)
    assert s.unkeyable == {}


def test_prompt_embeds_are_neither_loaded_nor_saved_and_are_counted(daemon, caplog):
    """Old code (with save_decode): both were saved (`meta.saves` had two specs): one under its
    placeholder ids (all 0), the KV that a prompt of zeros would then be served, the other under
    the token ids beside its embeddings. Here nothing is looked up or saved, and both are counted."""
    s = SchedulerSide(ConnectorConfig(daemon.socket, chunk_size=CHUNK, load_plan=False, save_decode=True), LAYOUT,
                      BLOCK, None)
    _store(daemon.socket, chunk_keys(LAYOUT, [0] * 130))  # a cache holding a prompt of zeros' KV
    embeds = [_request(None, embeds=torch.randn(130, 8)), _request(TOKENS, embeds=torch.randn(130, 8))]
    with caplog.at_level(logging.WARNING, logger="connectors.vllm.identity"):
        for r in embeds:
            assert s.get_num_new_matched_tokens(r, 0) == (0, False)
    meta = s.build_connector_meta(_step((embeds[0], list(range(9))), (embeds[1], list(range(9, 18)))))
    assert meta.saves == [] and meta.loads == []
    assert s.unkeyable == {"prompt_embeds": 2}
    assert "its prompt is given as embeddings (prompt_embeds: 1 requests so far)" in caplog.text
    with Client.connect(s.cfg.socket, map_arena=False) as c:
        assert {t["name"]: t for t in c.stat()["tiers"]}["dram"]["chunks"] == 4  # only what the test stored
