"""Metadata that outlives the process: written at shutdown, read at start.

The chunks themselves are durable on their tiers and are found again by scanning them; what a
scan cannot tell is advisory and kept in one msgpack file beside the NVMe chunks: recency, hit
counts and pins of the lower-tier chunks, and which objects of the shared tier this node wrote
(so its capacity accounting of `--object` survives a restart). Losing the file loses no chunk.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgpack

from tierd.store.chunk import Chunk
from tierd.store.index import ChunkIndex
from tierd.store.lowers import Lower

log = logging.getLogger(__name__)

META_FILE = "tierd-index.msgpack"
Meta = dict[bytes, dict[str, Any]]


def load_meta(meta_dir: Path | None) -> Meta:
    path = meta_dir / META_FILE if meta_dir else None
    if path is None or not path.exists():
        return {}
    try:
        raw = msgpack.unpackb(path.read_bytes(), raw=False)
        return {bytes(k): v for k, v in raw.items() if isinstance(v, dict)}
    except Exception:  # metadata is advisory: recency and hit counts only
        log.warning("ignoring unreadable %s", path)
        return {}


def save_meta(meta_dir: Path | None, index: ChunkIndex) -> None:
    if meta_dir is None or not index.lowers:
        return
    path = meta_dir / META_FILE
    data: dict[Any, Any] = {c.key: {"last_access": c.last_access, "hits": c.hits, "pinned": c.pinned}
                            for c in index.values() if c.lower}
    shared = index.lowers[-1] if index.lowers[-1].shared else None
    if shared is not None:  # the objects this node wrote, to count them after a restart
        for key in shared.policy.candidates():
            c = index[key]
            data[key]["object"] = [shared.tier.url, c.lower[shared.name], c.layout_id, c.namespace, c.size, c.created]
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(data, use_bin_type=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # advisory (recency, hits, pins, own objects): losing it loses no chunk
        log.warning("could not write the index metadata %s (%s): recency, hit counts and pins of the "
                    "NVMe chunks start afresh after a restart", path, exc)
        tmp.unlink(missing_ok=True)


async def restore_local(index: ChunkIndex, lower: Lower, meta: Meta) -> None:
    """Index what a local tier holds, least recently used first; copies beyond its capacity
    (it shrank since) are deleted."""
    records = await lower.tier.scan()
    records.sort(key=lambda r: meta.get(r.key, {}).get("last_access", r.mtime))
    for r in records:
        if lower.stats.used_bytes + r.stored_bytes > lower.stats.capacity_bytes:
            await lower.tier.delete(r.key)
            lower.stats.evictions += 1
            continue
        c = index.get(r.key)
        if c is None:
            m = meta.get(r.key, {})
            c = index[r.key] = Chunk(r.key, r.layout_id, r.namespace, r.payload_len, r.created,
                                     m.get("last_access", r.mtime), hits=m.get("hits", 0),
                                     pinned=m.get("pinned", False))
        lower.stats.used_bytes += r.stored_bytes
        index.quotas.charge(lower.name, c.namespace, r.stored_bytes)
        index.add_lower_copy(c, lower, r.stored_bytes, owned=True)
    log.info("tier %s: %d chunks, %d bytes recovered", lower.name, lower.stats.chunks, lower.stats.used_bytes)


def restore_owned(index: ChunkIndex, lower: Lower, meta: Meta) -> None:
    """Index the objects this node wrote to the shared tier before a restart (from the metadata
    file), so its capacity accounting and fast lookups survive; each is still verified when read."""
    for key, m in meta.items():
        rec = m.get("object")
        if not isinstance(rec, list) or len(rec) != 6 or rec[0] != lower.tier.url:
            continue
        _, stored, layout_id, namespace, size, created = rec
        c = index.get(key)
        if c is None:
            c = index[key] = Chunk(key, layout_id, namespace, size, created, m.get("last_access", created),
                                   hits=m.get("hits", 0), pinned=m.get("pinned", False))
        lower.stats.used_bytes += stored
        index.add_lower_copy(c, lower, stored, owned=True)
    log.info("tier %s: %d chunks written by this node, %d bytes", lower.name, lower.stats.chunks,
             lower.stats.used_bytes)
