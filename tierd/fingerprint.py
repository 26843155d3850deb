"""Content fingerprints of model and adapter checkpoints: what weights a chunk's KV came from.

A model's name or path says nothing about the weights behind it: a new revision, or a fine-tune
written over the same files, keeps the path (and can keep each file's size, inode and mtime), and
KV computed with the old weights would be served for the new ones. The fingerprint is computed
from content, cheaply whatever the checkpoint's size: every small file whole (config, tokenizer,
adapter config), and for each weight file its safetensors header (names, dtypes, shapes,
offsets) plus a fixed sample of its bytes, at most `SAMPLE_BYTES` per file. A change outside the
sample and the header is not seen; a rewrite of the weights (new values throughout) is.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Files at most this large are hashed whole.
SMALL_FILE = 1 << 20
#: Bytes sampled from each larger file: `SAMPLES` evenly spaced windows.
SAMPLES = 64
WINDOW = 64 << 10
SAMPLE_BYTES = SAMPLES * WINDOW
#: Weight-file suffixes whose header is hashed whole (safetensors: 8-byte length + JSON).
_SAFETENSORS = ".safetensors"


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= SMALL_FILE:
            h.update(f.read())
            return
        if path.suffix == _SAFETENSORS:
            n = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(n, 100 << 20)))
        step = max(1, (size - WINDOW) // max(1, SAMPLES - 1))
        for i in range(SAMPLES):
            f.seek(min(i * step, max(0, size - WINDOW)))
            h.update(f.read(WINDOW))


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """A hex fingerprint of a checkpoint file or directory (every regular file under it, in
    sorted order, hidden files and directories skipped)."""
    root = Path(path)
    h = hashlib.blake2b(b"tierd-fingerprint-v1\0", digest_size=16)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for p in files:
        _hash_file(h, p)
    return h.hexdigest()
