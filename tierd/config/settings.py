"""`Config`: the daemon's settings as one frozen, always-valid value.

Every field's static default is here; the four machine-dependent ones (socket, dram,
nvme_dir, nvme) have none, and tierd.config.sources fills them from tierd.config.defaults.
"""
from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from typing import Any

from tierd.config.endpoints import check_kv_events
from tierd.config.options import OPTIONS
from tierd.errors import ConfigError
from tierd.policies import DEFAULT_POLICY, LOWER_DEFAULT_POLICY
from tierd.sizes import MiB


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's settings. Frozen: read once at start, shared by every part of the daemon.

    Constructing one directly (embedded mode, tests) validates and normalises every field the
    same way load_config does (sizes and modes may be given as strings, paths become
    absolute), so an invalid Config cannot exist. The first four fields have no static
    default because theirs depend on the machine; load_config computes them.
    """

    socket: str
    dram: int
    nvme_dir: str
    nvme: int
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    record_trace: str | None = None
    calibrate: bool = True
    demote_high_watermark: float = 0.95
    demote_low_watermark: float = 0.85
    max_frame_bytes: int = 16 * MiB
    socket_mode: int = 0o600
    io_threads: int = 4
    mrc_sample_rate: float = 0.01
    object_url: str | None = None
    object: int = 1 << 40
    object_write: str = "through"
    object_timeout: float = 5.0
    object_lookup_budget: float = 0.05
    object_lookup_strategy: str = "bisect"
    object_queue: int = 1 << 30
    node_id: str = dataclasses.field(default_factory=socket.gethostname)
    kv_events: str | None = None
    kv_events_replay: str | None = None
    kv_events_buffer: int = 64 * MiB
    nvme_codec: str = "raw"
    object_codec: str = "raw"
    codec_device: str = "auto"
    encrypt_key_file: str | None = None
    allow_uids: str = "self"
    namespaces: str = ""
    progress_interval: float = 1.0
    quotas: dict[str, int] = dataclasses.field(default_factory=dict)
    dram_policy: str = DEFAULT_POLICY
    nvme_policy: str = LOWER_DEFAULT_POLICY
    object_policy: str = LOWER_DEFAULT_POLICY
    nvme_admission: str = "all"
    slot_check: bool = True
    quarantine_after: int = 3
    object_admission: str = "all"

    def __post_init__(self) -> None:
        for opt in OPTIONS:
            object.__setattr__(self, opt.name, opt.parse(getattr(self, opt.name), f"Config.{opt.name}", None))
        check_watermarks(self.demote_low_watermark, "Config.demote_low_watermark",
                         self.demote_high_watermark, "Config.demote_high_watermark")
        check_kv_events(self.kv_events, self.kv_events_replay)

    @property
    def tenants(self) -> list[str]:
        """The namespaces bound to a user (`namespaces`): each gets its own arena region and keys
        of its own (`tierd.tiers.arena`, `tierd.daemon.scope`)."""
        return sorted({pair.partition(":")[2] for pair in self.namespaces.split(",") if pair})

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON/YAML values, for `tierd stat`. socket_mode is written as
        an octal string ("0600") for people; the result loads back as a config file."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["socket_mode"] = f"{self.socket_mode:04o}"
        return out


def check_watermarks(low: float, low_where: str, high: float, high_where: str) -> None:
    """The one rule across two options. Config checks it for every instance; load_config checks
    it first with each value's source, so the error names the file, variable or flag to fix."""
    if not low < high:
        raise ConfigError(
            f"demote_low_watermark={low} (from {low_where}) must be below "
            f"demote_high_watermark={high} (from {high_where}): demotion runs from the high "
            f"watermark down to the low one; set them like 0.85 and 0.95"
        )
