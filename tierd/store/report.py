"""Read-only views of the store: `stat`, `ls` and `inspect`.

Nothing here changes what is stored, with one exception that keeps the index honest: `inspect`
of a key on the shared tier reads the object's header, so it indexes an object another node
wrote (as a lookup would) and forgets one that is gone from the bucket.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tierd.errors import InvalidArgumentError, NotFoundError, ObjectTierUnavailable
from tierd.store.chunk import Chunk, check_keys
from tierd.tiers.base import CopyHeader, Found

if TYPE_CHECKING:
    from tierd.store.tiered import TieredStore

SORTS = ("last_access", "size", "created", "hits")


def describe(c: Chunk) -> dict[str, Any]:
    return {
        "key": c.key.hex(), "tiers": c.tiers, "size": c.size, "namespace": c.namespace,
        "layout_id": c.layout_id, "created": c.created, "last_access": c.last_access,
        "hits": c.hits, "pinned": c.pinned, "leases": c.leases,
    }


def layout_facts(store: "TieredStore", layout_id: str) -> dict[str, Any]:
    """What a chunk's layout says about the model it was stored for: its name and fingerprint
    ("" if the layout has none). Layouts are learned when an engine registers them, so a chunk
    found on a lower tier after a restart may name one this daemon does not know yet:
    `layout_known` is then False and the fingerprint None."""
    layout = store.layouts.get(layout_id) if layout_id else None
    if layout is None:
        return {"layout_known": False, "model": None, "fingerprint": None}
    return {"layout_known": True, "model": layout.model, "fingerprint": layout.fingerprint}


def ls(store: "TieredStore", *, tier: str | None = None, namespace: str | None = None,
       key_prefix: str | None = None, sort: str = "last_access", limit: int | None = None) -> list[dict[str, Any]]:
    if sort not in SORTS:
        raise InvalidArgumentError(f"sort {sort!r}: use last_access, size, created or hits")
    rows = [
        c for c in store.index.values()
        if (tier is None or tier in c.tiers)
        and (namespace is None or c.namespace == namespace)
        and (key_prefix is None or c.key.hex().startswith(key_prefix.lower()))
    ]
    rows.sort(key=lambda c: getattr(c, sort), reverse=True)
    return [describe(c) for c in rows[: limit if limit is not None else len(rows)]]


def stat(store: "TieredStore") -> dict[str, Any]:
    dram = store.dram
    dram.used_bytes = store.alloc.used
    tiers = [dram.to_dict()] + [l.stats.to_dict() for l in store.lower]
    tiers[0].update({"policy": store.dram_room.policy.name, "dirty_bytes": store.dram_room.dirty_bytes()})
    for row, lower in zip(tiers[1:], store.lower):
        row.update(lower.tier.stats())
        row.update({"policy": lower.policy.name, "admission": lower.admission.name,
                    "admitted": lower.admission.admitted, "declined": lower.admission.declined})
    if store.shared is not None and store.uploader is not None:
        tiers[-1].update(store.uploads.stats())
        if store.probe is not None:
            tiers[-1].update(store.probe.stats())
        tiers[-1].update({"uploads_lost": store.uploader.lost, "upload_inflight": store.uploader.in_flight,
                          "write_mode": store.object_write})
    for row in tiers:
        row["quarantined"] = row["name"] in store.quarantine.entries
    sessions = store.sessions.open.values()
    return {
        "tiers": tiers,
        "chunks": len(store.index),
        "layouts": sorted(store.layouts),
        "sessions": len(sessions),
        "reservations": len(store.index.reserved),
        "leases": sum(len(s.leases) for s in sessions),
        "lookups": store.lookups.lookups,
        "moves_in_flight": len(store.moves.in_flight),
        "admission_rejected": store.writedown.rejected,
        "slot_check": store.sessions.slot_check,
        "commits_not_written": store.sessions.not_written,
        "canary": store.verifier.report(),
        "writedown_failing": store.writedown_failing,
        "dropped_unwritten": store.dram_room.dropped_unwritten,
        "background_restarts": store.background_restarts(),
        "demoter": store.demoter.state,
        "arena": store.arena.description,
        "arena_bytes": store.arena.size,
        "arena_regions": [r.describe() for r in store.arena.regions],
    }


async def inspect(store: "TieredStore", key: bytes) -> dict[str, Any]:
    """One chunk's metadata, with the model name and fingerprint of its layout when known
    (`layout_facts`), how each lower tier stores it (codec, stored bytes, ratio,
    read from the tier's own header); for a shared-tier copy also which node wrote it and when
    (so it works for chunks other nodes wrote)."""
    check_keys([key])
    c = store.index.get(key)
    shared = store.shared
    extra: dict[str, Any] = {}
    headers: dict[str, CopyHeader | None] = {}
    if shared is not None and (c is None or shared.name in c.lower):
        try:
            header = await shared.tier.read_header(key)
        except ObjectTierUnavailable as exc:
            if c is None:
                raise NotFoundError(f"key {key.hex()} is not stored locally, and the object tier "
                                    f"could not be asked: {exc}") from None
            header, extra = None, {"object": {"error": str(exc)}}
        else:
            if header is not None:
                if c is None or not c.layout_id:
                    store.index.index_found([Found(key, header.payload_len, header.layout_id, header.namespace,
                                                   header.created, header.medium_bytes)], shared)
                    c = store.index[key]
                    c.layout_id, c.namespace, c.size = header.layout_id, header.namespace, header.payload_len
                headers[shared.name] = header
                extra = {"object": {
                    "node": header.node, "written": header.created, "stored_bytes": header.medium_bytes,
                    "written_by_this_node": shared.owns(key), "url": shared.tier.url}}
            elif c is not None:  # gone from the bucket (another node's gc): forget it
                store.index.forget_lower_copy(c, shared)
                c = store.index.get(key)
    if c is None:
        raise NotFoundError(f"key {key.hex()} is not stored")
    for lower in store.lower:
        if lower.name in c.lower and lower.name not in headers and not lower.shared:
            headers[lower.name] = await lower.tier.read_header(key)
    stored = {name: {"codec": h.codec or "raw", "stored_bytes": h.stored, "encrypted": h.encrypted,
                     "ratio": h.payload_len / h.stored if h.stored else None}
              for name, h in headers.items() if h is not None}
    return {**describe(c), **layout_facts(store, c.layout_id), **extra, "stored": stored}
