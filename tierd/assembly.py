"""Builds the store a `Config` describes. Used by the daemon and by embedded mode alike."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tierd.store import TieredStore
from tierd.tier_costs import declared_costs

if TYPE_CHECKING:
    from tierd.config import Config


def build_store(config: "Config") -> TieredStore:
    """A store with the DRAM arena and, when `config.nvme > 0`, the NVMe tier below it."""
    lower = []
    if config.nvme > 0:
        from tierd.tiers.nvme import NvmeChunkFiles

        lower.append((NvmeChunkFiles(Path(config.nvme_dir)), config.nvme))
    store = TieredStore(
        dram_bytes=config.dram,
        lower_tiers=lower,
        io_threads=config.io_threads,
        high_watermark=config.demote_high_watermark,
        low_watermark=config.demote_low_watermark,
        meta_dir=config.nvme_dir if config.nvme > 0 else None,
    )
    store.costs = declared_costs(store)
    return store
