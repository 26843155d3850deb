"""Content fingerprints of model and adapter checkpoints: what weights a chunk's KV came from.

A model's name or path says nothing about the weights behind it: a new revision, or a fine-tune
written over the same files, keeps the path (and can keep each file's size, inode and mtime), and
KV computed with the old weights would be served for the new ones. So the fingerprint is made
from content, and it is cheap whatever the checkpoint's size, because every read counts against
fixed totals (`Limits`: 64 MiB in all by default, however many files and bytes there are):

- every file's relative name and size;
- small files whole (config, tokenizer, generation and adapter configs), up to a total (beyond
  it, which no real checkpoint reaches, further small files count by name and size only);
- each weight file's structure: a safetensors header whole (names, dtypes, shapes, offsets), a
  zip checkpoint's central directory (torch `.bin`/`.pt`/`.pth`: it holds the CRC-32 of every
  stored tensor, so it covers all their bytes), the head of any other file (a GGUF header);
- a fixed sample of weight bytes from every large file: the sample budget is shared equally by
  the files and, in a safetensors file, by its tensors, so each tensor's first bytes (and, where
  the share allows, up to 16 evenly spaced windows of it) are read. A fine-tune that changes
  only some tensors is seen; a change confined to bytes outside every window is not. (With more
  tensors than 16 KiB windows fit in the budget, about 2,000, an evenly spaced subset of the
  tensors is sampled: every tensor of a dense 70B model, not every expert of a large MoE.)

Directories are walked following symbolic links (a Hugging Face cache snapshot is a tree of links
into `blobs/`), each real directory once; hidden files and directories (`.git`, `.cache`) are
skipped. Names are hashed relative to the root, so the same files give the same fingerprint in a
snapshot of links and in a plain copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

_SAFETENSORS = ".safetensors"
_ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


@dataclass(frozen=True, slots=True)
class Limits:
    """How many bytes a fingerprint reads, in totals over all files of a checkpoint."""

    small_file: int = 1 << 20  # files up to this size are hashed whole...
    whole_bytes: int = 16 << 20  # ...while their total stays within this
    structure_bytes: int = 16 << 20  # safetensors headers, zip directories, heads of other files
    head_bytes: int = 1 << 20  # the head of a weight file of no known format (GGUF metadata)
    sample_bytes: int = 32 << 20  # weight samples, shared among the large files
    window: int = 16 << 10  # the smallest sample read at once
    windows_per_span: int = 16  # at most this many windows per tensor (or per file)

    @property
    def max_read(self) -> int:
        return self.whole_bytes + self.structure_bytes + self.sample_bytes


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A checkpoint's fingerprint and what computing it cost."""

    digest: str  # 32 hex digits
    files: int
    bytes_read: int
    seconds: float


class _Budget:
    """Bytes still allowed in one class of reads, and the bytes read in all."""

    def __init__(self, limits: Limits) -> None:
        self.whole = limits.whole_bytes
        self.structure = limits.structure_bytes
        self.read = 0


def _pread(fd: int, nbytes: int, offset: int, budget: _Budget) -> bytes:
    data = os.pread(fd, nbytes, offset)
    budget.read += len(data)
    return data


def _files(root: Path) -> list[tuple[str, Path]]:
    """(name relative to root, path) of every file under root, sorted; links followed."""
    if not root.is_dir():
        return [(root.name, root)]
    out: list[tuple[str, Path]] = []
    seen: set[tuple[int, int]] = set()
    for top, dirs, names in os.walk(root, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree, or a second link to one dir
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(top) / name
            if not name.startswith(".") and path.is_file():  # is_file follows links; a dangling one is skipped
                out.append((path.relative_to(root).as_posix(), path))
    out.sort()
    return out


def _safetensors_spans(fd: int, size: int, h: "hashlib.blake2b", budget: _Budget) -> list[tuple[int, int]] | None:
    """Hash a safetensors header; the byte ranges of its tensors, or None if it is not one."""
    if size < 8 or budget.structure < 8:
        return None
    n = int.from_bytes(_pread(fd, 8, 0, budget), "little")
    budget.structure -= 8
    if not 0 < n <= size - 8 or n > budget.structure:
        return None
    header = _pread(fd, n, 8, budget)
    budget.structure -= n
    h.update(b"safetensors\0" + header)
    try:
        table = json.loads(header)
        spans = sorted((8 + n + int(t["data_offsets"][0]), 8 + n + int(t["data_offsets"][1]))
                       for name, t in table.items() if name != "__metadata__")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return [(a, b) for a, b in spans if 0 <= a < b <= size] or None


def _zip_directory(fd: int, size: int, h: "hashlib.blake2b", budget: _Budget) -> bool:
    """Hash a zip archive's central directory (torch checkpoints: a CRC-32 per tensor)."""
    tail_len = min(size, (64 << 10) + 22)
    if tail_len > budget.structure:
        return False
    tail = _pread(fd, tail_len, size - tail_len, budget)
    budget.structure -= tail_len
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        return False
    cd_size, cd_offset = struct.unpack_from("<II", tail, at + 12)
    loc = at - 20
    if (cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF) and loc >= 0 and tail[loc:loc + 4] == _ZIP64_LOCATOR:
        eocd64 = struct.unpack_from("<Q", tail, loc + 8)[0]
        if budget.structure < 56 or eocd64 + 56 > size:
            return False
        record = _pread(fd, 56, eocd64, budget)
        budget.structure -= 56
        if record[:4] != _ZIP64_EOCD:
            return False
        cd_size, cd_offset = struct.unpack_from("<QQ", record, 40)
    if cd_offset + cd_size > size or cd_size > budget.structure:
        return False
    h.update(b"zip\0" + _pread(fd, cd_size, cd_offset, budget))
    budget.structure -= cd_size
    return True


def _generic_structure(fd: int, size: int, head_len: int, h: "hashlib.blake2b", budget: _Budget) -> None:
    """Hash the head of a weight file of no parsed format, and its zip directory if it is one."""
    head = _pread(fd, head_len, 0, budget) if head_len else b""
    budget.structure -= head_len
    h.update(b"head\0" + head)
    if head.startswith(_ZIP_MAGIC):
        _zip_directory(fd, size, h, budget)


def _span_windows(a: int, b: int, share: int, limits: Limits) -> list[tuple[int, int]]:
    """Evenly spaced windows of [a, b) totalling about `share` bytes, the first at `a` (and the
    last ending at `b` when there are two or more)."""
    length = b - a
    if length <= share:
        return [(a, length)]
    k = max(1, min(limits.windows_per_span, share // limits.window))
    w = share // k
    if k == 1:
        return [(a, w)]
    return [(a + i * (length - w) // (k - 1), w) for i in range(k)]


def _sample_plan(spans: list[tuple[int, int]], share: int, limits: Limits) -> list[tuple[int, int]]:
    """Windows for one file: its share split equally among its spans (tensors), or, when there
    are more spans than windows, one window in each of evenly chosen spans."""
    count = len(spans)
    if not count:
        return []
    if count * limits.window > share:
        k = max(1, share // limits.window)
        return [w for i in range(k) for w in _span_windows(*spans[i * count // k], limits.window, limits)]
    per_span = share // count
    return [w for a, b in spans for w in _span_windows(a, b, per_span, limits)]


def fingerprint_details(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Fingerprint:
    """The fingerprint of a checkpoint file or directory (see the module docstring), with the
    number of files and bytes it read. Raises FileNotFoundError if `path` does not exist.

    Reads in four passes, each within its budget and in a fixed order: small files whole (once
    their budget is spent, further small files count by name and size only); safetensors headers
    (what the weights are; first, so that other files cannot spend their budget); the heads (and
    zip directories) of other large files, the budget left shared equally; samples of the large
    files, the sample budget shared equally by them (by an evenly chosen subset, if there are
    more than windows) and within a safetensors file by its tensors."""
    start = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{str(root)!r}: no such file or directory to fingerprint")
    h = hashlib.blake2b(b"tierd-fingerprint-v2\0", digest_size=16)
    budget = _Budget(limits)
    files = [(name, p, p.stat().st_size) for name, p in _files(root)]
    h.update(f"{len(files)}\0".encode())
    large: list[tuple[str, Path, int]] = []
    for name, p, size in files:
        h.update(f"{name}\0{size}\0".encode())
        if size > limits.small_file:
            large.append((name, p, size))
        elif size <= budget.whole:
            with open(p, "rb") as f:
                data = f.read(size)
            budget.read += len(data)
            budget.whole -= size
            h.update(data)
    spans: list[list[tuple[int, int]] | None] = [None] * len(large)
    for i, (name, p, size) in enumerate(large):
        if name.endswith(_SAFETENSORS):
            h.update(f"\0structure\0{name}\0".encode())
            with open(p, "rb") as f:
                spans[i] = _safetensors_spans(f.fileno(), size, h, budget)
    rest = [i for i in range(len(large)) if spans[i] is None]
    for n, i in enumerate(rest):
        name, p, size = large[i]
        h.update(f"\0structure\0{name}\0".encode())
        head_len = min(size, limits.head_bytes, budget.structure // (len(rest) - n))
        with open(p, "rb") as f:
            _generic_structure(f.fileno(), size, head_len, h, budget)
        spans[i] = [(0, size)]
    sampled = min(len(large), limits.sample_bytes // limits.window)
    for j in range(sampled):
        name, p, size = large[i := j * len(large) // sampled]
        h.update(f"\0sample\0{name}\0".encode())
        with open(p, "rb") as f:
            for offset, length in _sample_plan(spans[i] or [], limits.sample_bytes // sampled, limits):
                h.update(f"{offset}:{length}\0".encode())
                h.update(_pread(f.fileno(), length, offset, budget))
    return Fingerprint(h.hexdigest(), len(files), budget.read, time.perf_counter() - start)


def fingerprint_path(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> str:
    """A hex fingerprint (32 digits) of a checkpoint file or directory."""
    return fingerprint_details(path, limits).digest


# ---------------------------------------------------------------------------------------
# A model's identity: the checkpoint's fingerprint plus how the engine runs it


def _canonical(value: Any) -> str:
    """A text form of a setting that is the same in every process (no object addresses)."""
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, Mapping):
        return json.dumps({str(k): _canonical(v) for k, v in value.items()}, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return json.dumps([_canonical(v) for v in value])
    return str(value).removeprefix("torch.")


def model_fingerprint(weights: str, facts: Mapping[str, Any]) -> str:
    """One hex string (32 digits) for a model as an engine runs it: the checkpoint's content
    fingerprint `weights` (or a declared one) and the engine's `facts` (revision, weight
    quantisation, compute dtype, KV cache dtype, config overrides...). Facts that are None are
    left out, so adding a fact that is unset keeps existing fingerprints."""
    h = hashlib.blake2b(b"tierd-model-v1\0", digest_size=16)
    h.update(f"weights={weights}\0".encode())
    for key in sorted(facts):
        if facts[key] is not None:
            h.update(f"{key}={_canonical(facts[key])}\0".encode())
    return h.hexdigest()


def resolve_model_dir(model: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """The files an engine loaded for `model`: the path itself if it exists, else the Hugging Face
    cache snapshot of `revision` (a commit hash, a branch or None for main) that the engine
    downloaded, found without the network. Raises FileNotFoundError naming what is missing."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception as exc:  # not a repo id, not downloaded, no huggingface_hub: all "not found"
        raise FileNotFoundError(
            f"model {model!r} (revision {revision or 'main'}): neither a local path nor in the Hugging Face cache "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def snapshot_revision(path: Path) -> str | None:
    """The commit hash of a Hugging Face cache snapshot directory (`.../snapshots/<hash>`)."""
    parts = path.resolve().parts if path.exists() else path.parts
    if len(parts) >= 2 and parts[-2] == "snapshots" and len(parts[-1]) == 40:
        return parts[-1]
    return None
