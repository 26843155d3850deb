"""Builds the store a `Config` describes. Used by the daemon and by embedded mode alike."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierd.policies import make_policy
from tierd.policies.admission import ADMISSIONS
from tierd.store import TieredStore
from tierd.store.chunk import DRAM
from tierd.store.lowers import PolicyFactory
from tierd.cost.tiers import declared_costs

if TYPE_CHECKING:
    from tierd.config import Config
    from tierd.tiers.base import LowerTier


def build_store(config: "Config") -> TieredStore:
    """A store with the DRAM arena, the NVMe tier below it when `config.nvme > 0`, and the
    shared object tier last when `config.object_url` is set; publishing KV events when
    `config.kv_events` is set."""
    lower: list[tuple[LowerTier, int]] = []
    cipher = _cipher(config)
    if config.nvme > 0:
        from tierd.tiers.nvme.files import NvmeChunkFiles
        from tierd.tiers.nvme.tier import NvmeTier

        files = NvmeChunkFiles(Path(config.nvme_dir), codec=_codec(config.nvme_codec, config), cipher=cipher)
        lower.append((NvmeTier(files, io_threads=config.io_threads), config.nvme))
    if config.object_url:
        from tierd.tiers.object.tier import ObjectTier

        lower.append((ObjectTier(config.object_url, node=config.node_id, timeout=config.object_timeout,
                                  codec=_codec(config.object_codec, config), cipher=cipher,
                                  lookup_strategy=config.object_lookup_strategy),
                      config.object))
    store = TieredStore(
        dram_bytes=config.dram,
        lower_tiers=lower,
        io_threads=config.io_threads,
        high_watermark=config.demote_high_watermark,
        low_watermark=config.demote_low_watermark,
        meta_dir=config.nvme_dir if config.nvme > 0 else None,
        object_write=config.object_write,
        upload_queue_bytes=config.object_queue,
        lookup_budget=config.object_lookup_budget,
        quotas=config.quotas,
        policies=_policies(config),
        slot_check=config.slot_check,
        quarantine_after=config.quarantine_after,
        tenants=config.tenants,
        admissions={"nvme": ADMISSIONS[config.nvme_admission], "object": ADMISSIONS[config.object_admission]},
    )
    store.costs = declared_costs(store.tier_names)
    if config.kv_events:
        _publish_events(store, config)
    return store


def _publish_events(store: TieredStore, config: "Config") -> None:
    """KV events on `--kv-events` (`tierd.events`), topic the node id; the sockets are bound here,
    so a taken port stops the start. The store closes the feed, and with it the publisher."""
    from tierd.events import open_kv_events

    try:
        store.events = open_kv_events(config.kv_events, replay_endpoint=config.kv_events_replay,  # type: ignore[arg-type]
                                      topic=config.node_id, buffer_bytes=config.kv_events_buffer,
                                      layouts=store.layouts)
    except BaseException:
        store.arena.close()
        raise


def _policies(config: "Config") -> dict[str, PolicyFactory]:
    """Each tier's eviction policy factory, by tier name."""
    names = {DRAM: config.dram_policy, "nvme": config.nvme_policy, "object": config.object_policy}
    return {tier: functools.partial(make_policy, name) for tier, name in names.items()}


def _cipher(config: "Config") -> Any:
    """The lower tiers' cipher when `--encrypt-key-file` is set; a key file that is missing, of
    the wrong size or open to group or others stops the start (ConfigError)."""
    if config.encrypt_key_file is None:
        return None
    from tierd.tiers.crypto import ChunkCipher

    return ChunkCipher.from_file(config.encrypt_key_file)


def _codec(spec: str, config: "Config") -> Any:
    """A tier's codec on the configured device; a device that cannot be had stops the start."""
    from tierd.errors import CodecError, ConfigError
    from tierd.tiers.encoding import TierCodec

    try:
        return TierCodec(spec, device=config.codec_device)
    except CodecError as exc:
        raise ConfigError(f"--codec-device={config.codec_device!r}: {exc}") from None
