"""The NVMe tier's start-up scan: the chunk files on disk, to rebuild the index after a restart.

Only tierd's own files are ever removed here: a name must be exactly one tierd writes
(`tierd.tiers.nvme.format`), and the file a regular file of this process's uid, looked at
without following a symlink; anything else someone put in the directory is left alone and
counted. Files this daemon's key cannot read (`--encrypt-key-file`) are kept until read, so a
wrong key file can still be fixed before the cache is lost.
"""
from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from typing import TYPE_CHECKING

from tierd.tiers.crypto import unreadable_reason
from tierd.tiers.nvme.format import (
    CHUNK_SUFFIX,
    HEADER_BYTES,
    SHARDS,
    CorruptChunk,
    StoredChunk,
    decode_header,
    is_chunk_name,
    is_probe_temp_name,
    is_write_temp_name,
)

if TYPE_CHECKING:
    from tierd.tiers.nvme.files import NvmeChunkFiles

log = logging.getLogger(__name__)


def scan(files: "NvmeChunkFiles") -> list[StoredChunk]:
    """Every intact-looking chunk on disk, oldest mtime first, to rebuild the index on restart.

    Removes leftover temp files (`temp_removed`) and chunk files whose header or size is bad
    (`dropped`). Only tierd's own files are ever removed: a name must be exactly one tierd
    writes (`tierd.tiers.nvme.format`: `.probe-<pid>-<8 hex>.tmp` in the root,
    `.<key>.<8 hex>.tmp` and `<key>.chunk` in the key's shard), and the file a regular file
    of this process's uid, looked at without following a symlink. Anything else someone put
    in the directory is left where it is (`left_alone`). Reads one header block per file,
    never payloads: payload checksums are verified on each read instead.
    """
    found: list[StoredChunk] = []
    temps = dropped = foreign = 0
    files.scanned = 0
    unreadable: Counter[str] = Counter()  # why this daemon's key cannot read a file, per reason
    for entry in os.scandir(files.root):
        if is_probe_temp_name(entry.name):  # an interrupted O_DIRECT probe
            removed = _remove_own(entry, "leftover temp file")
            temps += removed
            foreign += not removed
    for shard_name in SHARDS:
        shard = files.root / shard_name
        try:
            entries = list(os.scandir(shard))
        except FileNotFoundError:
            shard.mkdir(exist_ok=True)
            continue
        for entry in entries:
            name = entry.name
            if is_write_temp_name(name, shard_name):
                removed = _remove_own(entry, "temp file of an interrupted write")
                temps += removed
                foreign += not removed
            elif is_chunk_name(name, shard_name):
                files.scanned += 1
                chunk, reason = _scan_one(files, entry, shard.name)
                if chunk is not None:
                    found.append(chunk)
                    if reason:
                        unreadable[reason] += 1
                elif _remove_own(entry, reason):
                    dropped += 1
                else:
                    foreign += 1
            else:
                foreign += 1
                log.warning("leaving %s alone: not a name tierd writes", entry.path)
    with files._counter_lock:
        files.temp_removed += temps
        files.dropped += dropped
        files.left_alone += foreign
    found.sort(key=lambda c: c.mtime)
    log.info("scanned %s: %d chunks, %d dropped, %d temp files removed, %d files not tierd's left alone",
             files.root, len(found), dropped, temps, foreign)
    for reason, count in unreadable.items():  # kept until read: a wrong key file can still be fixed
        log.warning("%d chunk files in %s are %s: each is a miss, deleted when read; restart with the right "
                    "--encrypt-key-file to keep them", count, files.root, reason)
    return found

def _scan_one(files: "NvmeChunkFiles", entry: os.DirEntry[str], shard: str) -> tuple[StoredChunk | None, str]:
    """(record, "") for a good file; (record, why) for one this daemon's key cannot read,
    kept until read; (None, why) for a bad one, to remove."""
    key = bytes.fromhex(entry.name[: -len(CHUNK_SUFFIX)])  # the caller matched the name exactly
    try:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        with open(entry.path, "rb", buffering=0) as f:
            block = f.read(HEADER_BYTES)
        header = decode_header(block)
    except CorruptChunk as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {exc}"
    if header.key != key:
        return None, f"header key {header.key.hex()} differs from the file name"
    if st.st_size != header.medium_bytes:
        return None, f"file is {st.st_size} bytes, header says {header.medium_bytes} (truncated or extended)"
    foreign = unreadable_reason(files.cipher, header.encrypted, header.key_id) or ""
    return StoredChunk.from_header(header, st.st_size, st.st_mtime), foreign

def _remove_own(entry: os.DirEntry[str], reason: str) -> int:
    """Unlink a file named as tierd names its files, if it is a regular file of our uid
    (never following a symlink); 1 if removed, 0 if it was gone or is not ours to remove."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        kind = "a regular file" if stat.S_ISREG(st.st_mode) else f"not a regular file (mode {st.st_mode:o})"
        log.warning("leaving %s alone (%s): it is %s of uid %d, not a file tierd wrote as uid %d",
                    entry.path, reason, kind, st.st_uid, os.geteuid())
        return 0
    log.warning("removing %s: %s", entry.path, reason)
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return 0
    return 1
