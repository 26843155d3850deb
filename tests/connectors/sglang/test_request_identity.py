"""What tells two SGLang requests' pages apart in tierd's keys (issue 20, item 1), built with
SGLang's own `Req`, `RadixKey`, `MultimodalDataItem`, `LoRARef` and storage page-hash function.

SGLang's page hashes already carry a request's extra key, LoRA id, cache salt and images, and
tierd's keys are hashed over them: those tests pass on the old code too, and pin that it stays
so. What SGLang lacks, and the old backend lacked, is the adapters' content: `--lora-paths`
adapters are named uuid5(name, path), so one rewritten in place kept its keys across a restart.
On the old code the adapter tests fail: `connectors.sglang.identity` does not exist, and the
backend's keys did not change when the adapter did."""
from __future__ import annotations

import json
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.connectors.sglang.conftest import BackendFactory
from tests.connectors.sglang.pools import make_pool

from sglang.srt.lora.lora_registry import LoRARef  # noqa: E402  (SGLang imported by pools first)
from sglang.srt.managers.schedule_batch import MultimodalDataItem, Req  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402
from sglang.srt.multimodal.modality import Modality  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from connectors.sglang import identity  # noqa: E402
from connectors.sglang.keys import PageKeys  # noqa: E402
from tierd.errors import ConfigError  # noqa: E402
from tierd.layout import Layout  # noqa: E402

LAYOUT = Layout("org/model", "bfloat16", 4, 2, 64, chunk_tokens=16)
TOKENS = list(range(100, 164))  # four pages of 16


def _page_hashes(tokens: list[int] = TOKENS, **req_args: Any) -> list[str]:
    """SGLang's storage page hashes for a request, the way its cache controller computes them:
    a `Req` (which folds the LoRA id into the extra key), its radix key, `get_storage_hash_str`."""
    req = Req("r", "", array("q", tokens), SamplingParams(), **req_args)
    return get_storage_hash_str(RadixKey(req.origin_input_ids, req.extra_key, cache_salt=req.cache_salt), None,
                                page_size=16)


def _keys(hashes: list[str], adapters: str = "") -> list[bytes]:
    return PageKeys(LAYOUT, "default", "pp0of1", adapters)(hashes)


def test_extra_key_lora_id_and_salt_reach_tierds_keys():
    variants = {
        "plain": {}, "extra": {"extra_key": "k"}, "lora-1": {"lora_id": "1" * 32}, "lora-2": {"lora_id": "2" * 32},
        "salt-s": {"cache_salt": "s"}, "salt-t": {"cache_salt": "t"}, "salt-s+lora-1": {"cache_salt": "s", "lora_id": "1" * 32},
    }
    keys = {name: _keys(_page_hashes(**args)) for name, args in variants.items()}
    # every page of every variant is its own: the namespace seeds SGLang's chain from page 0
    assert len({k for ks in keys.values() for k in ks}) == len(variants) * 4
    assert _keys(_page_hashes(cache_salt="s")) == keys["salt-s"]  # and the same request, the same keys


def test_a_chain_continued_from_a_prior_hash_keeps_the_namespace():
    """SGLang hashes later pages from the last stored hash (prefetch after a partial hit): the
    salt's seed is carried by the chain, so the continued keys are the whole request's."""
    whole = _page_hashes(cache_salt="s")
    req = Req("r", "", array("q", TOKENS), SamplingParams(), cache_salt="s")
    rest = get_storage_hash_str(RadixKey(req.origin_input_ids[32:], req.extra_key, cache_salt=req.cache_salt),
                                whole[1], page_size=16)
    assert _keys(rest) == _keys(whole)[2:]


def test_images_reach_tierds_keys_through_their_placeholder_tokens():
    def with_image(h: int) -> list[str]:
        item = MultimodalDataItem(modality=Modality.IMAGE)
        item.set_hash(h)
        pads = list(item.padding_values())
        return _page_hashes(TOKENS[:20] + pads * 4 + TOKENS[36:])

    x, y = _keys(with_image(1234)), _keys(with_image(5678))
    assert x[0] == y[0] and all(a != b for a, b in zip(x[1:], y[1:]))


# ------------------------------------------------------------------ adapter content


def _adapter(path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (path / "adapter_model.safetensors").write_bytes(np.random.default_rng(seed).bytes(8192))
    return path


def _args(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(**{"enable_lora": None, "lora_paths": None, **fields})


def test_sglangs_lora_ids_do_not_change_when_an_adapter_is_rewritten(tmp_path):
    """The gap tierd fills: SGLang's id for a --lora-paths adapter is a function of name and path."""
    a = _adapter(tmp_path / "a", 1)
    before = _page_hashes(lora_id=LoRARef.deterministic_id("a", str(a)))
    _adapter(a, 2)
    assert _page_hashes(lora_id=LoRARef.deterministic_id("a", str(a))) == before


def test_the_adapters_tag_follows_adapter_content(tmp_path):
    a, b = _adapter(tmp_path / "a", 1), _adapter(tmp_path / "b", 2)
    assert identity.adapters_tag(None) == "" and identity.adapters_tag(_args()) == ""
    assert identity.adapters_tag(_args(enable_lora=False, lora_paths=[f"a={a}"])) == ""  # SGLang ignores them then
    tag = identity.adapters_tag(_args(lora_paths=[f"a={a}", {"lora_name": "b", "lora_path": str(b)}]))
    assert tag.startswith("lora-")
    # the same adapters in SGLang's other spellings (and after its resolution to LoRARef) give the same tag
    refs = [LoRARef(lora_name="a", lora_path=str(a)), LoRARef(lora_name="b", lora_path=str(b))]
    assert identity.adapters_tag(_args(enable_lora=True, lora_paths=refs)) == tag
    assert identity.adapters_tag(_args(lora_paths={"b": str(b), "a": str(a)})) == tag
    _adapter(a, 3)  # rewritten in place
    assert identity.adapters_tag(_args(lora_paths=[f"a={a}", {"lora_name": "b", "lora_path": str(b)}])) != tag
    hashes = _page_hashes()
    assert set(_keys(hashes, tag)).isdisjoint(_keys(hashes))  # base-model pages too: conservative


@pytest.mark.parametrize("entry", ["x=/nonexistent/adapter", "some-org/hub-adapter", {"lora_name": "x"}])
def test_an_adapter_tierd_cannot_read_is_refused(entry):
    with pytest.raises(ConfigError, match="adapter|lora-paths"):
        identity.adapters_tag(_args(lora_paths=[entry]))


def test_the_backend_keys_pages_with_the_servers_adapters(daemon, backend_factory: BackendFactory, tmp_path,
                                                          monkeypatch):
    """SGLang's scheduler process publishes its server args before it attaches the backend; no
    SGLang server runs here (no GPU), so the published args are stood in for by `get_server_args`."""
    import sglang.srt.runtime_context as rc

    a = _adapter(tmp_path / "a", 1)
    model = tmp_path / "model"  # the published args name a model too: its fingerprint seeds the layout
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    args = _args(lora_paths=[f"a={a}"], model_path=str(model))
    monkeypatch.setattr(rc, "get_server_args", lambda: args)
    hashes = _page_hashes()
    first = backend_factory(daemon.socket, make_pool("mha", "page_first"))._keys(hashes)
    assert backend_factory(daemon.socket, make_pool("mha", "page_first"))._keys(hashes) == first  # restarted, same adapter
    _adapter(a, 2)  # rewritten in place, same size, same path: a restarted engine gets new keys
    assert set(backend_factory(daemon.socket, make_pool("mha", "page_first"))._keys(hashes)).isdisjoint(first)
    args.lora_paths = ["a=/nonexistent/adapter"]
    with pytest.raises(ConfigError, match="not a local path"):
        backend_factory(daemon.socket, make_pool("mha", "page_first"))

    def unpublished() -> Any:
        raise ValueError("Global server args is not set yet!")  # what SGLang says outside a server

    monkeypatch.setattr(rc, "get_server_args", unpublished)
    b = backend_factory(daemon.socket, make_pool("mha", "page_first"))
    assert b._keys(hashes) == PageKeys(b.pages.layout, b.config.namespace, b.config.shard_tag)(hashes)  # as before
