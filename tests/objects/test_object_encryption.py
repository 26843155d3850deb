"""Encryption at rest on the object tier, against a real S3 server (SeaweedFS on loopback): the
tier on its own, then real daemons sharing a bucket with and without the key.

Before `--encrypt-key-file` these failed: tierd.tiers.crypto did not exist, `ObjectTier` took
no cipher and `tierd serve` refused the flag. The rename test also shows what the same move did
to a plaintext object (it was served under the other key).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import obstore
import pytest

from tests.conftest import SMALL, payload_for
from tests.waiting import wait_for
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.tiers.crypto import ChunkCipher
from tierd.tiers.object.bucket import open_store
from tierd.tiers.object.format import HEADER_BYTES, object_path, pack_header, parse_header
from tierd.tiers.object.tier import ObjectTier

MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))


def _tier(s3, url: str, master: bytes | None, node: str = "node-a", **kw) -> ObjectTier:
    return ObjectTier(url, node=node, env=s3.env(), cipher=None if master is None else ChunkCipher(master), **kw)


def _payload(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


async def _read(tier: ObjectTier, key: bytes, n: int, layout_id: str = SMALL.layout_id) -> bytes | None:
    dest = bytearray(n)
    header = await tier.read_into(key, memoryview(dest), layout_id=layout_id, payload_len=n)
    return None if header is None else bytes(dest)


def _exists(s3, url: str, key: bytes) -> bool:
    try:
        obstore.head(open_store(url, env=s3.env()), object_path(key))
    except (FileNotFoundError, obstore.exceptions.NotFoundError):
        return False
    return True


# -- the tier on its own ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL.chunk_bytes, 20 << 20])
async def test_round_trip_and_the_bucket_holds_no_plaintext(s3, object_url, size):
    tier = _tier(s3, object_url, MASTER, part_bytes=8 << 20)  # 20 MiB: a multipart put, ranged gets
    key, data = os.urandom(16), _payload(size, 1)
    assert await tier.write(key, SMALL.layout_id, "ns", memoryview(data)) == HEADER_BYTES + size
    assert await _read(tier, key, size) == data.tobytes()
    raw = bytes(obstore.get(open_store(object_url, env=s3.env()), object_path(key)).bytes())
    assert len(raw) == HEADER_BYTES + size  # nonce and tag are in the header: no bigger than plaintext
    assert all(data[i:i + 32].tobytes() not in raw for i in range(0, size, 256 * 1024))
    header = await tier.read_header(key)
    assert header is not None and header.encrypted and header.namespace == "ns"
    assert tier.counters["undecryptable"] == 0 and tier.stats()["encrypt_key_id"] == tier.cipher.key_id.hex()


async def test_a_codec_then_encryption_round_trip(s3, object_url):
    """Compress, then encrypt: the object is smaller than the chunk, and still unreadable."""
    tier = _tier(s3, object_url, MASTER, codec="zstd")
    tier.use_layouts({SMALL.layout_id: SMALL})
    key = os.urandom(16)
    data = np.zeros(SMALL.chunk_bytes, np.uint8)
    data[::3] = _payload(len(data[::3]), 2) % 4  # compressible, not trivially
    written = await tier.write(key, SMALL.layout_id, "ns", memoryview(data))
    assert HEADER_BYTES < written < HEADER_BYTES + SMALL.chunk_bytes // 2
    header = await tier.read_header(key)
    assert header.codec == "zstd:3" and header.encrypted
    assert await _read(tier, key, SMALL.chunk_bytes) == data.tobytes()


@pytest.mark.parametrize("reader", ["no key", "another key", "plaintext object"])
async def test_an_object_this_key_cannot_read_is_a_miss_left_for_others(s3, object_url, reader):
    writer = _tier(s3, object_url, None if reader == "plaintext object" else MASTER)
    key, data = os.urandom(16), _payload(SMALL.chunk_bytes, 3)
    await writer.write(key, SMALL.layout_id, "ns", memoryview(data))
    other = _tier(s3, object_url, {"no key": None, "another key": OTHER, "plaintext object": MASTER}[reader],
                  node="node-b")
    assert await _read(other, key, SMALL.chunk_bytes) is None
    assert other.counters["undecryptable"] == 1 and other.counters["corrupt_deleted"] == 0
    assert _exists(s3, object_url, key)  # not deleted: the nodes with the right key still read it
    assert await _read(writer, key, SMALL.chunk_bytes) == data.tobytes()


def _move(s3, url: str, key: bytes, to_key: bytes, **fields: object) -> None:
    """Rewrite an object's header (its hash is no secret) and put it under another key's name."""
    store = open_store(url, env=s3.env())
    raw = bytes(obstore.get(store, object_path(key)).bytes())
    header = dataclasses.replace(parse_header(raw[:HEADER_BYTES]), key=to_key, **fields)
    obstore.put(store, object_path(to_key), pack_header(header) + raw[HEADER_BYTES:])


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
async def test_an_object_copied_under_another_key_is_a_miss_and_deleted(s3, object_url, encrypted):
    tier = _tier(s3, object_url, MASTER if encrypted else None)
    key, other, data = os.urandom(16), os.urandom(16), _payload(SMALL.chunk_bytes, 4)
    await tier.write(key, SMALL.layout_id, "ns", memoryview(data))
    _move(s3, object_url, key, other)
    got = await _read(tier, other, SMALL.chunk_bytes)
    if encrypted:
        assert got is None and tier.counters["corrupt_deleted"] == 1 and tier.counters["undecryptable"] == 1
        assert not _exists(s3, object_url, other) and _exists(s3, object_url, key)
    else:
        assert got == data.tobytes()  # without encryption the copy is served under the other key


async def test_an_object_relabelled_to_another_namespace_is_a_miss(s3, object_url):
    tier = _tier(s3, object_url, MASTER)
    key, data = os.urandom(16), _payload(SMALL.chunk_bytes, 5)
    await tier.write(key, SMALL.layout_id, "tenantA", memoryview(data))
    _move(s3, object_url, key, key, namespace="tenantB")
    assert await _read(tier, key, SMALL.chunk_bytes) is None
    assert tier.counters["corrupt_deleted"] == 1 and not _exists(s3, object_url, key)


async def test_two_namespaces_upload_the_same_payload_as_different_bytes(s3, object_url):
    tier = _tier(s3, object_url, MASTER)
    data = _payload(SMALL.chunk_bytes, 6)
    keys = [os.urandom(16) for _ in range(2)]
    await tier.write(keys[0], SMALL.layout_id, "tenantA", memoryview(data))
    await tier.write(keys[1], SMALL.layout_id, "tenantB", memoryview(data))
    store = open_store(object_url, env=s3.env())
    bodies = {bytes(obstore.get(store, object_path(k)).bytes())[HEADER_BYTES:] for k in keys}
    assert len(bodies) == 2
    assert [await _read(tier, k, SMALL.chunk_bytes) for k in keys] == [data.tobytes()] * 2


# -- real daemons sharing the bucket ----------------------------------------------------------


def _key_file(tmp_path: Path, name: str, master: bytes) -> str:
    path = tmp_path / name
    path.write_text(master.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def _object_row(c: Client) -> dict:
    return next(t for t in c.stat()["tiers"] if t["name"] == "object")


def test_daemons_with_the_key_share_encrypted_chunks_and_one_without_gets_misses(object_daemons, object_url,
                                                                                  s3, tmp_path):
    key_file = _key_file(tmp_path, "a.key", MASTER)
    a = object_daemons("node-a", object_url, extra=("--encrypt-key-file", key_file))
    b = object_daemons("node-b", object_url, extra=("--encrypt-key-file", key_file))
    c = object_daemons("node-c", object_url, extra=("--encrypt-key-file", _key_file(tmp_path, "c.key", OTHER)))
    d = object_daemons("node-d", object_url)  # no key at all
    keys = chunk_keys(SMALL, np.random.default_rng(7).integers(0, 32000, 256 * 4))
    payloads = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    with Client.connect(a.socket) as ca:
        ca.put_chunks(SMALL, keys, payloads)
        wait_for("uploads", lambda: (t := _object_row(ca))["upload_queued"] == 0 and t["upload_inflight"] == 0
                 and t["chunks"] >= 4)
    store = open_store(object_url, env=s3.env())
    raw = bytes(obstore.get(store, object_path(keys[0])).bytes())
    assert payloads[0].tobytes()[:4096] not in raw
    with Client.connect(b.socket) as cb:
        wait_for("b to find a's chunks", lambda: cb.lookup(keys).prefix == 4)
        assert cb.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
        assert cb.inspect(keys[1])["stored"]["object"]["encrypted"] is True
        assert _object_row(cb)["encrypt_key_id"] == ChunkCipher(MASTER).key_id.hex()
    for daemon in (c, d):
        with Client.connect(daemon.socket) as cx:
            wait_for("the bucket's chunks found", lambda: cx.lookup(keys).prefix == 4)  # the bucket has them ...
            assert cx.get_chunks(SMALL, keys) == []  # ... but nothing is served
            row = _object_row(cx)
            assert row["undecryptable"] >= 1 and row["corrupt"] >= 1 and row["corrupt_deleted"] == 0
    assert all(_exists(s3, object_url, k) for k in keys)  # a misconfigured node deleted nothing
