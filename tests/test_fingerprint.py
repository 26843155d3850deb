"""`tierd.fingerprint`: a checkpoint's fingerprint follows its content (a rewrite in place that
keeps size, inode and mtime is seen), reads a bounded number of bytes however large the
checkpoint, and reads a Hugging Face cache snapshot of links like a plain directory.

Before this module hashed by budget, the code it replaced read 4 MiB from every file with no
total (a 2,000-file checkpoint: 8 GiB), sampled only evenly spaced windows of a file (so a
changed tensor between windows was missed), and hashed torch zip checkpoints by sample only."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tierd.fingerprint import (
    DEFAULT_LIMITS,
    Limits,
    fingerprint_details,
    fingerprint_path,
    model_fingerprint,
    resolve_model_dir,
    snapshot_revision,
)

#: Small limits, so that a few MiB of test files are sampled rather than read whole.
TINY = Limits(small_file=4 << 10, whole_bytes=64 << 10, structure_bytes=64 << 10, head_bytes=4 << 10,
              sample_bytes=256 << 10, window=4 << 10, windows_per_span=4)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata or {"format": "pt"})


def tensor_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor's data in a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__"}


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place, keeping size, inode and mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_model(d: Path, seed: int = 0, mib: int = 3) -> Path:
    """A checkpoint directory: config, tokenizer config, one safetensors file of three tensors."""
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"hidden_size": 256, "num_hidden_layers": 2}))
    (d / "tokenizer_config.json").write_text("{}")
    rng = np.random.default_rng(seed)
    n = mib * (1 << 20) // 4 // 3
    write_safetensors(d / "model.safetensors",
                      {name: rng.standard_normal(n).astype(np.float32) for name in ("a.weight", "b.weight", "c.weight")})
    return d


def test_same_content_same_fingerprint_wherever_it_lies(tmp_path):
    a = make_model(tmp_path / "one")
    b = tmp_path / "two" / "elsewhere"
    shutil.copytree(a, b)
    assert fingerprint_path(a) == fingerprint_path(b) == fingerprint_path(a)
    assert len(fingerprint_path(a)) == 32
    assert fingerprint_path(a) != fingerprint_path(make_model(tmp_path / "three", seed=1))


def test_one_byte_of_config_changes_it(tmp_path):
    d = make_model(tmp_path / "m")
    before = fingerprint_path(d)
    (d / "config.json").write_text(json.dumps({"hidden_size": 256, "num_hidden_layers": 3}))
    assert fingerprint_path(d) != before


def test_one_byte_of_a_safetensors_header_changes_it(tmp_path):
    d = make_model(tmp_path / "m")
    before = fingerprint_path(d, TINY)
    path = d / "model.safetensors"
    at = path.read_bytes().index(b"b.weight")
    flip_byte(path, at)  # the tensor's name: same length, same data
    assert fingerprint_path(d, TINY) != before


def test_every_tensor_is_sampled_but_not_every_byte(tmp_path):
    """The first bytes of each tensor and the last of the file are always read; a byte in
    between windows is not (the sample is what keeps the cost bounded)."""
    d = make_model(tmp_path / "m")
    path = d / "model.safetensors"
    offsets = tensor_offsets(path)
    fp = fingerprint_details(d, TINY)
    assert fp.bytes_read <= TINY.max_read < path.stat().st_size
    for name, (start, end) in sorted(offsets.items()):
        before = fingerprint_path(d, TINY)
        flip_byte(path, start)
        assert fingerprint_path(d, TINY) != before, name
        before = fingerprint_path(d, TINY)
        flip_byte(path, end - 1)
        assert fingerprint_path(d, TINY) != before, name
    # 256 KiB over 3 tensors of 1 MiB: 4 windows of ~21 KiB each, so the middle of a gap is unread
    start, end = offsets["b.weight"]
    before = fingerprint_path(d, TINY)
    flip_byte(path, start + (end - start) // 6)
    assert fingerprint_path(d, TINY) == before


def test_rewritten_in_place_with_same_size_inode_and_mtime_is_new(tmp_path):
    d = make_model(tmp_path / "m", mib=48)  # larger than the default sample: sampled, not read whole
    path = d / "model.safetensors"
    st = path.stat()
    before = fingerprint_details(d)
    assert before.bytes_read < st.st_size
    make_model(tmp_path / "other", seed=7, mib=48)
    new_bytes = (tmp_path / "other" / "model.safetensors").read_bytes()
    assert len(new_bytes) == st.st_size
    with open(path, "r+b") as f:  # in place: the same inode
        f.write(new_bytes)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (st.st_size, st.st_ino, st.st_mtime_ns)
    assert fingerprint_path(d) != before.digest


def test_bytes_read_stay_bounded_for_huge_checkpoints(tmp_path):
    """Sparse files: a 1 TiB file, 300 weight shards of 2 GiB (safetensors, 64 tensors each),
    200 torch-style shards of 1 GiB and 3,000 "small" files of 900 KiB: 1.5 TiB in all, and at most
    `max_read` (64 MiB) is read."""
    d = tmp_path / "huge"
    d.mkdir()
    with open(d / "consolidated.pth", "wb") as f:
        f.truncate(1 << 40)
    for i in range(300):
        tensors = {f"layer.{j}.weight": {"dtype": "BF16", "shape": [1 << 14, 1 << 10],
                                         "data_offsets": [j * (1 << 25), (j + 1) * (1 << 25)]} for j in range(64)}
        header = json.dumps(tensors).encode()
        with open(d / f"model-{i:05d}-of-00300.safetensors", "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            f.truncate(8 + len(header) + 64 * (1 << 25))
    for i in range(200):
        with open(d / f"pytorch_model-{i:05d}.bin", "wb") as f:
            f.truncate(1 << 30)
    for i in range(3000):
        with open(d / f"extra-{i:05d}.json", "wb") as f:
            f.truncate(900 << 10)
    fp = fingerprint_details(d)
    assert fp.files == 3501
    assert fp.bytes_read <= DEFAULT_LIMITS.max_read == 64 << 20
    assert fp.bytes_read > 32 << 20  # and it did read its budget: whole files, headers, samples
    path = d / "model-00123-of-00300.safetensors"
    assert fingerprint_path(d) == fp.digest
    first = tensor_offsets(path)["layer.0.weight"][0]
    flip_byte(path, first)  # a tensor's first byte, in one of 300 shards
    assert fingerprint_path(d) != fp.digest


def test_torch_zip_checkpoint_is_covered_by_its_crc_directory(tmp_path):
    """A torch checkpoint (a zip) keeps a CRC-32 of every tensor in its central directory: a
    value changed where no sample window falls still changes the fingerprint."""
    import torch

    d = tmp_path / "pt"
    d.mkdir()
    weights = {"w": torch.zeros(1 << 20), "v": torch.ones(1 << 20)}
    torch.save(weights, d / "pytorch_model.bin")
    size = (d / "pytorch_model.bin").stat().st_size
    limits = Limits(small_file=1, whole_bytes=0, structure_bytes=1 << 20, head_bytes=4 << 10, sample_bytes=4 << 10,
                    window=4 << 10, windows_per_span=1)
    before = fingerprint_details(d, limits)
    assert before.bytes_read < size // 10
    weights["v"][12345] = 2.0
    torch.save(weights, d / "pytorch_model.bin")
    assert (d / "pytorch_model.bin").stat().st_size == size
    assert fingerprint_path(d, limits) != before.digest


def test_gguf_like_file_head_is_hashed(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 40000)
    before = fingerprint_path(path)
    flip_byte(path, 1000)  # in the metadata at the head
    assert fingerprint_path(path) != before


def test_hugging_face_snapshot_of_links_reads_like_a_copy(tmp_path):
    """The cache layout huggingface_hub writes: snapshots/<commit>/<name> are links to
    blobs/<hash>, in subdirectories too; a link back up the tree does not loop."""
    plain = make_model(tmp_path / "plain")
    (plain / "original").mkdir()
    (plain / "original" / "params.json").write_text('{"dim": 256}')
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for i, rel in enumerate(["config.json", "tokenizer_config.json", "model.safetensors", "original/params.json"]):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(plain / rel, blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (snap / "original" / "up").symlink_to("..")  # a cycle
    assert fingerprint_path(snap) == fingerprint_path(plain)

    found = resolve_model_dir("org/tiny", None, cache_dir=str(hub))
    assert found == snap and snapshot_revision(found) == commit
    assert resolve_model_dir("org/tiny", commit, cache_dir=str(hub)) == snap
    flip_byte(repo / "blobs" / "blob2", 100)
    assert fingerprint_path(found) != fingerprint_path(plain)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        fingerprint_path(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither a local path nor in the Hugging Face cache"):
        resolve_model_dir("org/not-downloaded", "main", cache_dir=str(tmp_path))
    assert snapshot_revision(tmp_path) is None


def test_model_fingerprint_folds_the_engine_settings():
    base = {"revision": "abc", "quantization": None, "dtype": "bfloat16", "kv_cache_dtype": "auto"}
    fp = model_fingerprint("00" * 16, base)
    assert len(fp) == 32 and fp == model_fingerprint("00" * 16, dict(reversed(list(base.items()))))
    assert fp == model_fingerprint("00" * 16, {**base, "added_later": None})  # an unset fact changes nothing
    for change in ({"kv_cache_dtype": "fp8"}, {"quantization": "awq"}, {"dtype": "float16"}, {"revision": "abd"}):
        assert model_fingerprint("00" * 16, {**base, **change}) != fp, change
    assert model_fingerprint("11" * 16, base) != fp
    overrides = {"rope_scaling": {"type": "yarn", "factor": 4}}
    assert model_fingerprint("00" * 16, {**base, "hf_overrides": overrides}) == \
        model_fingerprint("00" * 16, {**base, "hf_overrides": json.loads(json.dumps(overrides))})
