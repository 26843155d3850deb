"""The option table: every option's name, parser, placeholder and help text, in one place.

An option has the same name everywhere: `dram` in the config file, `TIERD_DRAM` in the
environment, `--dram` on the command line, `Config.dram` in code; Option derives the flag and
the variable from the name so they cannot drift apart. Each option's default lives on its
Config field (tierd.config.settings), or for the machine-dependent ones in
tierd.config.defaults. Adding an option is one row here plus one Config field.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from tierd.config.parsers import (
    parse_admission,
    parse_bool,
    parse_capacity,
    parse_codec,
    parse_codec_device,
    parse_dram,
    parse_fraction,
    parse_host,
    parse_io_threads,
    parse_key_file,
    parse_log_level,
    parse_lookup_strategy,
    parse_max_frame,
    parse_mode,
    parse_node_id,
    parse_object_url,
    parse_object_write,
    parse_optional_path,
    parse_path,
    parse_policy,
    parse_port,
    parse_quarantine_after,
    parse_quotas,
    parse_seconds,
    parse_socket,
)
from tierd.config.users import parse_allow_uids, parse_namespaces
from tierd.config.endpoints import parse_replay_buffer, parse_zmq_endpoint


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its name everywhere, its parser and its help text."""

    name: str
    parse: Callable[[object, str, str | None], Any]
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "TIERD_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("socket", parse_socket, "PATH",
           "Unix socket to listen on (default: $XDG_RUNTIME_DIR/tierd.sock, else /tmp/tierd-<uid>/tierd.sock)"),
    Option("dram", parse_dram, "SIZE",
           "DRAM tier capacity, e.g. 8GiB (default: min(25%% of RAM, free /dev/shm less a margin))"),
    Option("nvme_dir", parse_path, "DIR",
           "directory of the NVMe tier (default: $XDG_CACHE_HOME/tierd/chunks or ~/.cache/tierd/chunks)"),
    Option("nvme", parse_capacity, "SIZE",
           "NVMe tier capacity; 0 turns the tier off (default: min(10%% of free space there, 64GiB))"),
    Option("metrics_port", parse_port, "PORT",
           "serve Prometheus metrics on this port; 0 picks a free one (default: off)"),
    Option("metrics_host", parse_host, "HOST", "address the metrics server binds (default: 127.0.0.1)"),
    Option("log_level", parse_log_level, "LEVEL", "DEBUG, INFO, WARNING or ERROR (default: INFO)"),
    Option("record_trace", parse_optional_path, "FILE", "write the access trace to this Parquet file (default: off)"),
    Option("calibrate", parse_bool, "BOOL", "measure tier bandwidth and latency at start (default: on)"),
    Option("demote_high_watermark", parse_fraction, "FRACTION",
           "start demoting from DRAM when it is this full (default: 0.95)"),
    Option("demote_low_watermark", parse_fraction, "FRACTION",
           "stop demoting when DRAM is down to this full (default: 0.85)"),
    Option("max_frame_bytes", parse_max_frame, "SIZE", "largest control message accepted (default: 16MiB)"),
    Option("socket_mode", parse_mode, "MODE", "permission bits of the socket, octal (default: 0600)"),
    Option("io_threads", parse_io_threads, "N", "threads doing tier I/O, 1 to 64 (default: 4)"),
    Option("mrc_sample_rate", parse_fraction, "RATE",
           "share of chunk keys the online hit-rate curve samples, in (0, 1] (default: 0.01)"),
    Option("object_url", parse_object_url, "URL",
           "object tier shared by all nodes: s3://bucket/prefix (endpoint and credentials from the "
           "AWS_* variables), file:///dir or memory:// (default: off)"),
    Option("object", parse_capacity, "SIZE",
           "most bytes this node writes to the object tier; 0 only reads (default: 1TiB)"),
    Option("object_write", parse_object_write, "MODE",
           "'through': upload every committed chunk in the background; 'back': only on eviction "
           "from the last local tier (default: through)"),
    Option("object_timeout", parse_seconds, "SECONDS", "deadline of one object-store request (default: 5)"),
    Option("object_lookup_budget", parse_seconds, "SECONDS",
           "how long a lookup may wait on the object tier for keys missing locally (default: 50ms)"),
    Option("object_lookup_strategy", parse_lookup_strategy, "STRATEGY",
           "how a lookup finds how far a prefix runs in the object tier: 'bisect' (probe far ahead, "
           "then narrow; a few rounds of HEADs) or 'walk' (every key, in growing waves) (default: bisect)"),
    Option("object_queue", parse_capacity, "SIZE",
           "bytes of chunks waiting for upload; beyond it the oldest are dropped (default: 1GiB)"),
    Option("node_id", parse_node_id, "NAME", "this node's name in the objects it writes (default: host name)"),
    Option("kv_events", parse_zmq_endpoint, "ENDPOINT",
           "publish what this node stores and drops, per tier, as vLLM KV events (ZMQ PUB, topic = "
           "--node-id) on this endpoint, e.g. tcp://127.0.0.1:5557 (default: off)"),
    Option("kv_events_replay", parse_zmq_endpoint, "ENDPOINT",
           "serve missed KV-event batches to subscribers that ask (ZMQ ROUTER, vLLM's replay protocol) "
           "on this endpoint (default: off)"),
    Option("kv_events_buffer", parse_replay_buffer, "SIZE",
           "bytes of the latest KV-event batches kept for replay (default: 64MiB)"),
    Option("nvme_codec", parse_codec, "CODEC",
           "how the NVMe tier stores chunks: raw, zstd[:LEVEL], zstd-shuffle[:LEVEL] (lossless), "
           "int8k-tq3v or int8k-tq4v (lossy) (default: raw)"),
    Option("object_codec", parse_codec, "CODEC",
           "how this node writes chunks to the object tier; same choices as --nvme-codec (default: raw)"),
    Option("codec_device", parse_codec_device, "DEVICE",
           "where the quantised codecs run: auto (CUDA where torch sees a device), cpu or cuda (default: auto)"),
    Option("encrypt_key_file", parse_key_file, "FILE",
           "encrypt what the NVMe and object tiers store (AES-256-GCM, a key per namespace) with the "
           "32-byte key in FILE (raw or 64 hex characters, mode 0600) (default: off)"),
    Option("allow_uids", parse_allow_uids, "USERS",
           "who may connect (checked on every connection): uids, user names and self (the "
           "daemon's own user), comma separated; root only if listed (default: self)"),
    Option("namespaces", parse_namespaces, "USER:NS,...",
           "bind users to namespaces, e.g. 1001:tenantA,alice:tenantB: their connections see and "
           "write only chunks of that namespace (default: off)"),
    Option("progress_interval", parse_seconds, "SECONDS",
           "seconds between progress lines of long start-up and shutdown steps (default: 1)"),
    Option("dram_policy", parse_policy, "POLICY",
           "which DRAM chunk is evicted first: lru, arc, s3fifo, prefix or reuse-gap (`tierd mrc "
           "--policy all` compares them on a trace) (default: reuse-gap, chosen by bench/policies.py)"),
    Option("nvme_policy", parse_policy, "POLICY",
           "which NVMe copy is evicted first; same choices as --dram-policy (default: lru)"),
    Option("object_policy", parse_policy, "POLICY",
           "which of this node's own object-tier copies is evicted first; same choices as --dram-policy (default: lru)"),
    Option("nvme_admission", parse_admission, "FILTER",
           "which chunks leaving DRAM are written to NVMe: all, reuse (only those used a second "
           "time: less SSD wear, some hits lost) or adaptive (reuse plus each prompt's first chunks "
           "up to a depth chosen online to lose almost no hits) (default: all)"),
    Option("object_admission", parse_admission, "FILTER",
           "which chunks are uploaded to the object tier: all, reuse or adaptive, as --nvme-admission (default: all)"),
    Option("slot_check", parse_bool, "BOOL",
           "refuse a commit whose slot its writer did not fully write (a canary per 4 KiB page, armed "
           "at reserve); off only to measure its cost (default: on)"),
    Option("quarantine_after", parse_quarantine_after, "N",
           "quarantine a tier (its chunks are not served until `tierd quarantine clear`) once the live "
           "canary has found this many of its chunks differing from recomputed KV; 0 never (default: 3)"),
    Option("quotas", parse_quotas, "NS:SIZE,...",
           "byte quota of a namespace on each local tier (DRAM, NVMe), e.g. tenantA:2GiB,tenantB:512MiB: "
           "over it, the namespace's own oldest chunks make room (default: off)"),
)

BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def unknown_message(shown: list[str], names: list[str], valid: list[str], what: str, strip: str = "") -> str:
    """"unknown key 'dramm' (did you mean 'dram'?); valid keys are: ...". Suggestions compare
    names without the common `strip` prefix, which would otherwise make everything look close."""
    bare = {v[len(strip):]: v for v in valid}
    parts = []
    for label, name in zip(shown, names):
        close = difflib.get_close_matches(name[len(strip):], list(bare), n=1, cutoff=0.6)
        parts.append(f"{label!r}" + (f" (did you mean {bare[close[0]]!r}?)" if close else ""))
    plural = "s" if len(parts) > 1 else ""
    return f"unknown {what}{plural} {', '.join(parts)}; valid {what}s are: {', '.join(valid)}"
