"""The vLLM connector's device copies (connectors/vllm/gpu.py) on a CUDA device, against a real
daemon subprocess: saves gathered from vLLM-GPU-layout blocks into arena slots, loads scattered
back layer by layer, with the arena pinned (zero-copy) and without (staged through device
memory). Every byte is checked: the stored chunks against the torch reference's gather, the
target blocks against the source blocks, every other block against its old bytes.

Needs torch to see a CUDA device; skipped with the reason elsewhere. NOT RUN on the
development machine (no GPU there). Imports no vLLM, so it runs on a GPU machine without it
(`scripts/device_check.sh`)."""
from __future__ import annotations

import pytest
import torch

from connectors.link import DaemonLink
from connectors.vllm.paged import PagedKV
from native.backend import TorchCopier
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

L, H, D, BS, NB, C = 3, 2, 64, 16, 24, 32
LAYOUT = Layout("gpu-copies", "bfloat16", L, H, D, chunk_tokens=C)
PROMPT = list(range(500, 500 + 2 * C))  # two chunks
SRC_BLOCKS = [[9, 3], [12, 1]]
DST_BLOCKS = [[0, 5], [6, 7]]


def _no_cuda_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: no CUDA device for the connector's device copies"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_no_cuda_reason() is not None, reason=str(_no_cuda_reason()))]


def _gpu_kv(seed: int) -> dict[str, torch.Tensor]:
    """vLLM-GPU-style views (LBNHC: [L, B, N, H, 2D] physical, [B, H, N, 2D] per layer) of random bytes."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.randint(-30000, 30000, (L, NB, BS, H, 2 * D), dtype=torch.int16, generator=gen)
    buf = buf.view(torch.bfloat16).cuda()
    return {f"model.layers.{i}.attn": buf[i].permute(0, 2, 1, 3) for i in range(L)}


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-arena", "staged"])
def test_saves_and_layerwise_loads_move_every_byte(daemon, pinned):
    from connectors.vllm.gpu import DeviceLoader, DeviceSaves, pin_arena

    src_kv, dst_kv = _gpu_kv(1), _gpu_kv(2)
    before = {k: v.clone() for k, v in dst_kv.items()}
    src, dst = PagedKV(src_kv, LAYOUT, BS), PagedKV(dst_kv, LAYOUT, BS)
    assert src.engine == "vllm-gpu" and src.copy_path in ("native-cuda", "native-triton", "native-torch")
    link = DaemonLink(daemon.socket, LAYOUT, name="gpu-copies", namespace="default", map_arena=True,
                      on_connect=pin_arena if pinned else None)
    client = link.client()
    assert client is not None
    keys = chunk_keys(LAYOUT, PROMPT)
    try:
        with client.put(LAYOUT, keys, "default") as batch:
            assert batch.reserved == [0, 1]
            DeviceSaves(src).gather(DeviceSaves.step_done(), [(SRC_BLOCKS[i], batch.view(i)) for i in range(2)])
        with Client.connect(daemon.socket) as reader, reader.get(LAYOUT, keys) as lease:
            for i in range(2):
                want = torch.zeros(LAYOUT.chunk_bytes, dtype=torch.uint8, device="cuda")
                TorchCopier(src.cache).gather(src.runs(SRC_BLOCKS[i]), [want])
                assert bytes(lease.view(i)) == want.cpu().numpy().tobytes()

        loader = DeviceLoader(dst)
        with client.get(LAYOUT, keys) as lease:
            loader.start([(lease.view(i), DST_BLOCKS[i], 0) for i in range(2)])
            for layer in range(L):
                loader.wait_layer(layer)  # the current stream waits; the host does not
            assert loader.wait_all()
        for name in dst_kv:
            for s_blocks, d_blocks in zip(SRC_BLOCKS, DST_BLOCKS):
                for sb, db in zip(s_blocks, d_blocks):
                    assert torch.equal(dst_kv[name][db].view(torch.int16), src_kv[name][sb].view(torch.int16))
            rest = [b for b in range(NB) if b not in sum(DST_BLOCKS, [])]
            assert torch.equal(dst_kv[name][rest].view(torch.int16), before[name][rest].view(torch.int16))
    finally:
        link.close()
