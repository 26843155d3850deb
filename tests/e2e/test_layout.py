"""The canonical chunk the connector stores holds the model's true per-token K and V: checked
against transformers' own KV cache for the same float32 weights and tokens."""
from __future__ import annotations

import random

import torch

from tests.e2e.test_connector import BLOCK, kv_config
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout


def test_stored_chunk_matches_transformers_kv(test_model_dir, engines, daemon):
    from transformers import AutoModelForCausalLM

    tokens = [random.Random(7).randrange(10, 900) for _ in range(300)]
    engines.run(test_model_dir, [tokens], kv_transfer_config=kv_config(daemon.socket), enable_prefix_caching=False,
                single_process=True, block_size=BLOCK, max_tokens=1)
    model = AutoModelForCausalLM.from_pretrained(test_model_dir, dtype=torch.float32)
    with torch.no_grad():
        cache = model(torch.tensor([tokens]), use_cache=True).past_key_values
    with Client.connect(daemon.socket) as c:
        info = c.ls()
        assert len(info) == 1  # one full chunk of 256 tokens
        layout = Layout.from_dict(c._call("layouts")["layouts"][info[0]["layout_id"]])
        keys = chunk_keys(layout, tokens)
        with c.get(layout, keys) as lease:
            assert lease.count == 1
            chunk = lease.tensor(0).clone()  # [layers, 2, 256, heads * head_dim]
    h, d = layout.num_kv_heads, layout.head_dim
    for li in range(layout.num_layers):
        ref_k, ref_v = _layer_kv(cache, li)  # [heads, tokens, head_dim]
        got_k = chunk[li, 0].view(256, h, d).permute(1, 0, 2)
        got_v = chunk[li, 1].view(256, h, d).permute(1, 0, 2)
        assert torch.allclose(got_k, ref_k[:, :256], atol=1e-4), (li, (got_k - ref_k[:, :256]).abs().max())
        assert torch.allclose(got_v, ref_v[:, :256], atol=1e-4), (li, (got_v - ref_v[:, :256]).abs().max())


def _layer_kv(cache, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[li].keys[0], layers[li].values[0]
    return cache[li][0][0], cache[li][1][0]
