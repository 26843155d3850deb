"""The vLLM connector's device copies (connectors/vllm/gpu.py), against a real daemon subprocess:
saves gathered from the cache into arena slots, loads scattered back layer by layer, with the
arena pinned (copies address it in place) and without (staged through device memory), for K+V
caches (vLLM's GPU layout) and MLA caches (one latent per token).

The same test runs on two implementations of the device interface: the CPU one
(`native.device_cpu`: deferred streams, so a copy nobody waited for has not happened when the
bytes are checked) everywhere, and CUDA wherever torch sees a GPU (skipped with the reason
elsewhere; not run on the development machine). Every byte is checked: the stored chunks
against the torch reference's gather, the target blocks against the source blocks, every other
block against its old bytes. Imports no vLLM (runs on a GPU machine without it).

On the code before issue 23 the CPU cases could not run at all (the classes called torch.cuda
directly), and the MLA staged case failed on a CUDA device: its staging buffers were sized for
K and V, twice an MLA chunk, and the copy into the slot failed on the size mismatch."""
from __future__ import annotations

import pytest
import torch

from connectors.link import DaemonLink
from connectors.vllm.gpu import DeviceLoader, DeviceSaves, pin_arena
from connectors.vllm.paged import PagedKV
from native.backend import TorchCopier
from native.device import for_device
from tests.devices import WHERE
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

L, H, D, BS, NB, C = 3, 2, 64, 16, 24, 32
LATENT = 96
KV_LAYOUT = Layout("gpu-copies", "bfloat16", L, H, D, chunk_tokens=C)
MLA_LAYOUT = Layout("gpu-copies-mla", "bfloat16", L, 1, LATENT, chunk_tokens=C, kv_factor=1)
PROMPT = list(range(500, 500 + 2 * C))  # two chunks
SRC_BLOCKS = [[9, 3], [12, 1]]
DST_BLOCKS = [[0, 5], [6, 7]]


def _caches(kind: str, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Random bytes in vLLM's GPU K+V layout (LBNHC: [L, B, N, H, 2D] physical, [B, H, N, 2D] per
    layer) or its MLA layout ([L, B, N, latent] physical, [B, 1, N, latent] per layer)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "kv":
        buf = torch.randint(-30000, 30000, (L, NB, BS, H, 2 * D), dtype=torch.int16, generator=gen)
        buf = buf.view(torch.bfloat16).to(device)
        return {f"model.layers.{i}.attn": buf[i].permute(0, 2, 1, 3) for i in range(L)}
    buf = torch.randint(-30000, 30000, (L, NB, BS, LATENT), dtype=torch.int16, generator=gen)
    buf = buf.view(torch.bfloat16).to(device)
    return {f"model.layers.{i}.attn": buf[i].unsqueeze(1) for i in range(L)}


@pytest.mark.parametrize("kind", ["kv", "mla"])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-arena", "staged"])
@pytest.mark.parametrize("where", WHERE)
def test_saves_and_layerwise_loads_move_every_byte(daemon, where, pinned, kind):
    layout = KV_LAYOUT if kind == "kv" else MLA_LAYOUT
    engine = "vllm-gpu" if kind == "kv" else "vllm-mla"
    src_kv, dst_kv = _caches(kind, where, 1), _caches(kind, where, 2)
    before = {k: v.clone() for k, v in dst_kv.items()}
    src, dst = PagedKV(src_kv, layout, BS, engine=engine), PagedKV(dst_kv, layout, BS, engine=engine)
    device = for_device(src.device, pinnable=pinned)
    link = DaemonLink(daemon.socket, layout, name="gpu-copies", namespace="default", map_arena=True,
                      on_connect=pin_arena(device) if pinned else None)
    client = link.client()
    assert client is not None
    keys = chunk_keys(layout, PROMPT)
    try:
        saves = DeviceSaves(src, device)
        with client.put(layout, keys, "default") as batch:
            assert batch.reserved == [0, 1]
            assert all(device.is_pinned(batch.view(i)) == pinned for i in range(2))
            saves.gather(saves.step_done(), [(SRC_BLOCKS[i], batch.view(i)) for i in range(2)])
        assert (saves._staged is None) == pinned  # the path asked for is the path taken
        if saves._staged is not None:
            assert saves._staged.chunk_bytes == layout.chunk_bytes
        with Client.connect(daemon.socket) as reader, reader.get(layout, keys) as lease:
            for i in range(2):
                want = torch.zeros(layout.chunk_bytes, dtype=torch.uint8, device=where)
                TorchCopier(src.cache).gather(src.runs(SRC_BLOCKS[i]), [want])
                assert bytes(lease.view(i)) == want.cpu().numpy().tobytes()

        loader = DeviceLoader(dst, device)
        with client.get(layout, keys) as lease:
            loader.start([(lease.view(i), DST_BLOCKS[i], 0) for i in range(2)])
            for layer in range(L):
                loader.wait_layer(layer)  # the current stream waits; on a GPU the host does not
            assert loader.wait_all()
        for name in dst_kv:
            for s_blocks, d_blocks in zip(SRC_BLOCKS, DST_BLOCKS):
                for sb, db in zip(s_blocks, d_blocks):
                    assert torch.equal(dst_kv[name][db].view(torch.int16), src_kv[name][sb].view(torch.int16))
            rest = [b for b in range(NB) if b not in sum(DST_BLOCKS, [])]
            assert torch.equal(dst_kv[name][rest].view(torch.int16), before[name][rest].view(torch.int16))
    finally:
        link.close()
