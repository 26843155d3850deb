"""Codecs inside the tiers: the NVMe files and objects store encoded chunks and read them back.

Real files (the NVMe tier on tmp_path, O_DIRECT where the disk allows it) and a real in-process
obstore MemoryStore for the object tier's framing; the daemon-level tests (tests/codecs/
test_codec_daemon.py) use a real SeaweedFS server.
"""
from __future__ import annotations

import asyncio
import hashlib
import struct
from pathlib import Path

import pytest
import torch
import xxhash

from tierd.codecs.sample import synthetic_kv
from tierd.errors import CodecError
from tierd.layout import Layout
from tierd.tiers.encoding import TierCodec
from tierd.tiers.nvme import format as nvme_format
from tierd.tiers.nvme.files import NvmeChunkFiles
from tierd.tiers.nvme.format import HEADER_BYTES
from tierd.tiers.object.format import object_path
from tierd.tiers.object.tier import ObjectTier

LAYOUT = Layout("codec-tier-test", "bfloat16", 4, 2, 64, chunk_tokens=256)  # 512 KiB chunks
ODD = Layout("codec-tier-odd", "bfloat16", 2, 2, 48, chunk_tokens=16)  # head_dim 48: no Hadamard transform
LAYOUTS = {LAYOUT.layout_id: LAYOUT, ODD.layout_id: ODD}


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def values_rel_mse(want: bytes, got: bytes | bytearray, layout: Layout = LAYOUT) -> float:
    a = torch.frombuffer(bytearray(want), dtype=torch.bfloat16).view(layout.chunk_shape)[:, 1].float()
    b = torch.frombuffer(bytearray(got), dtype=torch.bfloat16).view(layout.chunk_shape)[:, 1].float()
    return float(((a - b) ** 2).sum() / (a ** 2).sum())


def tier(path: Path, codec: str = "raw", layouts: dict[str, Layout] | None = None) -> NvmeChunkFiles:
    t = NvmeChunkFiles(path, codec=codec)
    t.codec.layouts = LAYOUTS if layouts is None else layouts
    return t


@pytest.mark.parametrize("spec", ["zstd-shuffle:1", "zstd:3", "int8k-tq3v", "int8k-tq4v"])
def test_nvme_tier_stores_encoded_chunks_and_reads_them_back(tmp_path: Path, spec: str) -> None:
    t = tier(tmp_path, spec)
    payload = synthetic_kv(LAYOUT, seed=1)
    size = t.write(key_of(1), LAYOUT.layout_id, "ns", payload)
    raw_size = t.file_bytes_for(len(payload))
    assert size < raw_size and t.path_for(key_of(1)).stat().st_size == size
    dest = bytearray(len(payload))
    assert t.read_into(key_of(1), dest, layout_id=LAYOUT.layout_id, payload_len=len(payload)) is not None
    if spec.startswith("zstd"):
        assert bytes(dest) == payload
    else:
        assert bytes(dest) != payload and values_rel_mse(payload, dest) <= (0.04 if spec.endswith("3v") else 0.012)
    (rec,) = t.scan()  # the index rebuilt after a restart knows the raw size and the codec
    assert (rec.payload_len, rec.stored_bytes, rec.codec) == (len(payload), size, t.codec.spec)
    header = t.read_header(key_of(1))
    assert header is not None and header.codec == t.codec.spec and header.stored < len(payload)
    stats = t.codec.stats()
    assert stats["codec_encoded"] == 1 and stats["codec_decoded"] == 1 and stats["codec_ratio"] > 1.1


def test_a_tier_reads_whatever_codec_wrote_its_files(tmp_path: Path) -> None:
    """The header names the codec: a tier configured raw (or with another codec) still reads them."""
    payload = synthetic_kv(LAYOUT, seed=2)
    tier(tmp_path, "zstd-shuffle:1").write(key_of(2), LAYOUT.layout_id, "ns", payload)
    for spec in ("raw", "int8k-tq3v"):
        dest = bytearray(len(payload))
        assert tier(tmp_path, spec).read_into(key_of(2), dest, layout_id=LAYOUT.layout_id, payload_len=len(payload))
        assert bytes(dest) == payload


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("where", ["blob_body", "blob_header", "tier_header_codec"])
def test_a_damaged_encoded_chunk_is_a_miss_and_is_deleted(tmp_path: Path, where: str) -> None:
    t = tier(tmp_path, "int8k-tq3v")
    payload = synthetic_kv(LAYOUT, seed=3)
    t.write(key_of(3), LAYOUT.layout_id, "ns", payload)
    path = t.path_for(key_of(3))
    if where == "blob_body":
        _flip(path, HEADER_BYTES + 5000)
    elif where == "blob_header":
        _flip(path, HEADER_BYTES + 20)
    else:  # a consistent tier header (hash recomputed) that names another codec than the blob's
        raw = bytearray(path.read_bytes())
        raw[96:112] = b"zstd:3".ljust(16, b"\0")
        struct.pack_into("<Q", raw, nvme_format._HASH_OFFSET, xxhash.xxh3_64_intdigest(bytes(raw[:nvme_format._HASH_OFFSET])))
        path.write_bytes(bytes(raw))
    dest = bytearray(len(payload))
    assert t.read_into(key_of(3), dest, layout_id=LAYOUT.layout_id, payload_len=len(payload)) is None
    assert not path.exists() and t.corrupt == 1


def test_an_encoded_chunk_of_an_unregistered_layout_is_a_miss_but_kept(tmp_path: Path) -> None:
    payload = synthetic_kv(LAYOUT, seed=4)
    tier(tmp_path, "zstd:1").write(key_of(4), LAYOUT.layout_id, "ns", payload)
    fresh = tier(tmp_path, "zstd:1", layouts={})  # e.g. after a restart, before an engine registered it
    assert fresh.read_into(key_of(4), bytearray(len(payload)), layout_id=LAYOUT.layout_id,
                           payload_len=len(payload)) is None
    assert fresh.path_for(key_of(4)).exists() and fresh.corrupt == 0


def test_chunks_the_codec_cannot_help_are_stored_raw(tmp_path: Path) -> None:
    """A layout the quantiser refuses (head_dim 48), an unregistered layout, and incompressible
    bytes under zstd are all stored raw, exactly, and counted."""
    quant = tier(tmp_path / "q", "int8k-tq3v")
    odd = synthetic_kv(ODD, seed=5)
    quant.write(key_of(5), ODD.layout_id, "ns", odd)
    quant.write(key_of(6), "00000000000000ff", "ns", b"calibration bytes")
    zstd = tier(tmp_path / "z", "zstd:3")
    noise = torch.randint(0, 256, (LAYOUT.chunk_bytes,), dtype=torch.uint8).numpy().tobytes()
    zstd.write(key_of(7), LAYOUT.layout_id, "ns", noise)
    for t, key, layout_id, data in ((quant, key_of(5), ODD.layout_id, odd),
                                    (quant, key_of(6), "00000000000000ff", b"calibration bytes"),
                                    (zstd, key_of(7), LAYOUT.layout_id, noise)):
        header = t.read_header(key)
        assert header is not None and header.codec == "" and header.stored == len(data)
        dest = bytearray(len(data))
        assert t.read_into(key, dest, layout_id=layout_id, payload_len=len(data)) and bytes(dest) == data
    assert quant.codec.counters.stored_raw == 2 and zstd.codec.counters.stored_raw == 1


def test_version_1_chunk_files_are_still_read(tmp_path: Path) -> None:
    """Files written before codecs existed (format version 1) stay readable after an upgrade."""
    t = tier(tmp_path)
    payload = b"written by tierd before codecs" * 100
    key = key_of(8)
    head = bytearray(HEADER_BYTES)
    layout_id = LAYOUT.layout_id.encode()
    struct.pack_into("<8sHHHH16s32sQQd", head, 0, b"TIERDCK1", 1, 0, len(layout_id), 2, key, layout_id,
                     len(payload), xxhash.xxh3_64_intdigest(payload), 1000.0)
    head[88:90] = b"ns"
    struct.pack_into("<Q", head, 344, xxhash.xxh3_64_intdigest(bytes(head[:344])))
    body = payload + bytes(-len(payload) % 4096)
    t.path_for(key).write_bytes(bytes(head) + body)
    (rec,) = t.scan()
    assert (rec.key, rec.namespace, rec.payload_len, rec.created) == (key, "ns", len(payload), 1000.0)
    dest = bytearray(len(payload))
    assert t.read_into(key, dest, layout_id=LAYOUT.layout_id, payload_len=len(payload)) and bytes(dest) == payload


# ------------------------------------------------------------------ the object tier's framing


def object_tier(codec: str, *, store: object = None, part_bytes: int = 8 << 20) -> ObjectTier:
    t = ObjectTier("memory://", node="node-a", codec=codec, store=store, part_bytes=part_bytes)
    t.use_layouts(LAYOUTS)
    return t


@pytest.mark.parametrize("part_bytes", [8 << 20, 64 << 10])
def test_object_tier_encoded_round_trip_with_and_without_a_size_hint(part_bytes: int) -> None:
    async def run() -> None:
        writer = object_tier("int8k-tq3v", part_bytes=part_bytes)
        payload = synthetic_kv(LAYOUT, seed=9)
        written = await writer.write(key_of(9), LAYOUT.layout_id, "ns", memoryview(payload))
        assert 512 < written < len(payload) // 2
        reader = object_tier("raw", store=writer.store, part_bytes=part_bytes)  # another node, no codec set
        for hint in (written, None, 512 + len(payload)):  # exact, none, the raw size (too large)
            dest = bytearray(len(payload))
            header = await reader.read_into(key_of(9), memoryview(dest), layout_id=LAYOUT.layout_id,
                                            payload_len=len(payload), stored_bytes=hint)
            assert header and header.codec == "int8k-tq3v" and header.node == "node-a"
            assert values_rel_mse(payload, dest) <= 0.04
        assert reader.counters["corrupt_deleted"] == 0

    asyncio.run(run())


def test_object_tier_damaged_encoded_object_is_a_miss_and_deleted() -> None:
    async def run() -> None:
        import obstore

        t = object_tier("zstd-shuffle:1")
        payload = synthetic_kv(LAYOUT, seed=10)
        await t.write(key_of(10), LAYOUT.layout_id, "ns", memoryview(payload))
        path = object_path(key_of(10))
        raw = bytearray(await (await obstore.get_async(t.store, path)).bytes_async())
        raw[512 + 300] ^= 0x01
        await obstore.put_async(t.store, path, bytes(raw))
        dest = bytearray(len(payload))
        assert not await t.read_into(key_of(10), memoryview(dest), layout_id=LAYOUT.layout_id,
                                     payload_len=len(payload))
        assert t.counters["corrupt_deleted"] == 1 and await t.stored_size(key_of(10)) is None
        await t.write(key_of(11), LAYOUT.layout_id, "ns", memoryview(payload))
        path = object_path(key_of(11))
        raw = bytes(await (await obstore.get_async(t.store, path)).bytes_async())
        await obstore.put_async(t.store, path, raw[:-100])  # truncated
        assert not await t.read_into(key_of(11), memoryview(dest), layout_id=LAYOUT.layout_id,
                                     payload_len=len(payload))
        assert t.counters["corrupt_deleted"] == 2

    asyncio.run(run())


def test_tier_codec_refuses_bad_specs() -> None:
    for bad in ("lz4", "zstd:0", "", "int8k-tq2v"):
        with pytest.raises(CodecError, match="use one of"):
            TierCodec(bad)
    assert TierCodec("zstd").spec == "zstd:3" and TierCodec("raw").codec is None


def test_codec_calibration_counts_decode_time(tmp_path: Path) -> None:
    """The cost model's view of a codec tier: fewer bytes from the medium, plus decoding."""
    from tierd.cost.calibrate import codec_speed, with_codec
    from tierd.cost.tiers import TierCost

    codec = TierCodec("int8k-tq3v")
    ratio, decode_bw = codec_speed(codec)
    assert 2.5 < ratio < 3.5 and decode_bw > 0
    medium = TierCost("nvme", 1e9, 1e-4)
    effective = with_codec(medium, codec, speed=(2.8, 0.4e9))
    assert effective.latency == medium.latency
    assert effective.predict(2.8e9) == pytest.approx(1e-4 + 1.0 + 7.0)  # 1 GB read + 2.8 GB decoded


def test_codec_device_choice(tmp_path: Path) -> None:
    """auto takes CUDA where torch sees a device, else the CPU; asking for CUDA without one is a
    clear error; the lossless codecs always run on the CPU. Where CUDA exists, the GPU decodes
    what the CPU encoded to the same bytes the CPU decoder gives."""
    assert TierCodec("zstd:1", device="cuda").device == "cpu"
    assert TierCodec("int8k-tq3v", device="cpu").device == "cpu"
    with pytest.raises(CodecError, match="use one of auto, cpu, cuda"):
        TierCodec("int8k-tq3v", device="gpu")
    if not torch.cuda.is_available():
        assert TierCodec("int8k-tq3v").device == "cpu"
        with pytest.raises(CodecError, match="torch sees no CUDA device"):
            TierCodec("int8k-tq3v", device="cuda")
        return
    payload = synthetic_kv(LAYOUT, seed=12)
    cpu, gpu = tier(tmp_path / "cpu", "int8k-tq3v"), NvmeChunkFiles(tmp_path / "cpu", codec=TierCodec("int8k-tq3v"))
    gpu.codec.layouts = LAYOUTS
    assert gpu.codec.device == "cuda"
    cpu.write(key_of(12), LAYOUT.layout_id, "ns", payload)
    a, b = bytearray(len(payload)), bytearray(len(payload))
    assert cpu.read_into(key_of(12), a, layout_id=LAYOUT.layout_id, payload_len=len(payload))
    assert gpu.read_into(key_of(12), b, layout_id=LAYOUT.layout_id, payload_len=len(payload))
    assert values_rel_mse(bytes(a), b) < 1e-4
