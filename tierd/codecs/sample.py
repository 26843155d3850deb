"""Synthetic KV chunks for measuring codecs (start-up calibration, benchmarks, tests).

Random-normal values with a few outlier key channels per head (×20), the pattern that makes
per-tensor key scales fail: close enough to real KV for ratios and speeds, and reproducible
from a seed.
"""
from __future__ import annotations

import torch

from tierd.codecs.quant import DTYPES
from tierd.layout import Layout


def synthetic_kv(layout: Layout, seed: int = 0, *, outlier_channels: int = 4, outlier_scale: float = 20.0) -> bytes:
    """Canonical bytes of one chunk of `layout` (a float dtype the quantised codecs accept)."""
    gen = torch.Generator().manual_seed(seed)
    chunk = torch.randn(layout.chunk_shape, generator=gen)
    if layout.kv_factor == 2 and outlier_channels:
        keys = chunk[:, 0].unflatten(-1, (layout.num_kv_heads, layout.head_dim))
        channels = torch.randperm(layout.head_dim, generator=gen)[:outlier_channels]
        keys[..., channels] *= outlier_scale
    return chunk.to(DTYPES[layout.dtype]).contiguous().view(torch.uint8).numpy().tobytes()
