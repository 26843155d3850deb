"""Retention of the shared object tier: a maximum age and a maximum total size for a prefix.

Enforced by `tierd gc`, run by an operator or a cron job — never by each node on the hot path,
since a bucket shared by many nodes needs one collector, not one per node. Objects are
immutable content addresses, so deleting one is always safe: a node that still indexes it gets
a miss on its next read (never wrong data) and recomputes or re-uploads.

Age is the object's last-modified time in the store. Over the size bound the oldest objects go
first (an approximation of LRU: object stores do not record reads).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import obstore

from tierd.tiers.object.format import HEADER_BYTES

_DELETE_BATCH = 1000  # the S3 DeleteObjects limit


@dataclass(slots=True)
class GcReport:
    objects: int = 0
    bytes: int = 0
    deleted_age: int = 0
    deleted_size: int = 0
    deleted_bytes: int = 0
    kept_objects: int = 0
    kept_bytes: int = 0
    dry_run: bool = False
    others: int = 0  # objects under the prefix that are not tierd chunks: never touched
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


async def collect(store: Any, *, max_age: float | None = None, max_bytes: int | None = None,
                  dry_run: bool = False, now: float | None = None) -> GcReport:
    """Delete chunk objects older than `max_age` seconds, then the oldest until at most
    `max_bytes` remain. Lists the whole prefix once; deletes in batches."""
    now = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    chunks: list[tuple[float, int, str]] = []
    async for batch in obstore.list(store, chunk_size=1000):
        for meta in batch:
            path = meta["path"]
            if not path.endswith(".chunk") or meta["size"] < HEADER_BYTES:
                report.others += 1
                continue
            chunks.append((meta["last_modified"].timestamp(), int(meta["size"]), path))
    chunks.sort()  # oldest first
    report.objects = len(chunks)
    report.bytes = sum(size for _, size, _ in chunks)
    doomed: list[tuple[int, str]] = []
    keep: list[tuple[float, int, str]] = []
    for modified, size, path in chunks:
        if max_age is not None and now - modified > max_age:
            doomed.append((size, path))
            report.deleted_age += 1
        else:
            keep.append((modified, size, path))
    remaining = sum(size for _, size, _ in keep)
    if max_bytes is not None:
        while keep and remaining > max_bytes:
            _, size, path = keep.pop(0)
            doomed.append((size, path))
            remaining -= size
            report.deleted_size += 1
    report.deleted_bytes = sum(size for size, _ in doomed)
    report.kept_objects, report.kept_bytes = len(keep), remaining
    if not dry_run:
        paths = [p for _, p in doomed]
        for i in range(0, len(paths), _DELETE_BATCH):
            try:
                await obstore.delete_async(store, paths[i:i + _DELETE_BATCH])
            except Exception as exc:  # report and go on: gc is idempotent, the next run retries
                report.errors.append(str(exc).splitlines()[0])
    return report
