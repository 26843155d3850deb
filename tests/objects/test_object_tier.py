"""The object tier on its own, against a real S3 server (SeaweedFS) and obstore's local stores."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import obstore
import pytest

from tests.conftest import BUCKET
from tierd.errors import ConfigError, ObjectTierUnavailable
from tierd.tiers.object.breaker import BreakerState
from tierd.tiers.object.format import HEADER_BYTES, object_path
from tierd.tiers.object.tier import ObjectTier

LAYOUT = "ab12cd34ab12cd34"


def _payload(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _tier(s3, url: str, **kw) -> ObjectTier:
    return ObjectTier(url, node="node-a", env=s3.env(), **kw)


@pytest.mark.parametrize("size", [4 << 20, 32 << 20])
async def test_round_trip_is_byte_identical(s3, object_url, size):
    tier = _tier(s3, object_url, part_bytes=8 << 20)  # 32 MiB: a multipart put and 5 ranged gets
    await tier.check()
    key, data = os.urandom(16), _payload(size, 1)
    assert await tier.write(key, LAYOUT, "ns", memoryview(data)) == HEADER_BYTES + size
    dest = bytearray(size)
    assert await tier.read_into(key, memoryview(dest), layout_id=LAYOUT, payload_len=size)
    assert dest == data.tobytes()
    header = await tier.read_header(key)
    assert header is not None and header.node == "node-a" and header.namespace == "ns"


async def test_second_write_of_a_key_is_skipped(s3, object_url):
    a, b = _tier(s3, object_url), ObjectTier(object_url, node="node-b", env=s3.env())
    key, data = os.urandom(16), _payload(1 << 20, 2)
    assert await a.write(key, LAYOUT, "ns", memoryview(data)) > 0
    assert await b.write(key, LAYOUT, "ns", memoryview(data)) == 0
    assert b.counters["put_skipped_existing"] == 1
    assert (await b.read_header(key)).node == "node-a"  # the first writer's object stayed


class _Requests:
    """Counts the object tier's PUTs and HEADs; each call still goes to the real server. With
    `refuse_conditional`, a conditional PUT fails as a store without If-None-Match support
    answers (HTTP 501): SeaweedFS supports the header, so that answer can only be simulated."""

    def __init__(self, monkeypatch, refuse_conditional: bool = False) -> None:
        import tierd.tiers.object.tier as mod

        self.puts: list[str] = []
        self.heads = 0
        real_put, real_head = obstore.put_async, obstore.head_async

        async def put(store, path, body, *, mode="overwrite", **kw):
            self.puts.append(mode)
            if refuse_conditional and mode == "create":
                raise obstore.exceptions.GenericError("PUT failed: 501 Not Implemented (If-None-Match)")
            return await real_put(store, path, body, mode=mode, **kw)

        async def head(store, path):
            self.heads += 1
            return await real_head(store, path)

        monkeypatch.setattr(mod.obstore, "put_async", put)
        monkeypatch.setattr(mod.obstore, "head_async", head)


async def test_an_upload_is_one_conditional_put(s3, object_url, monkeypatch):
    tier = _tier(s3, object_url)
    requests = _Requests(monkeypatch)
    key, data = os.urandom(16), _payload(1 << 20, 4)
    assert await tier.write(key, LAYOUT, "ns", memoryview(data)) == HEADER_BYTES + (1 << 20)
    assert requests.puts == ["create"] and requests.heads == 0
    assert await tier.write(key, LAYOUT, "ns", memoryview(data)) == 0  # the server refused it: 412
    assert tier.counters["put_skipped_existing"] == 1 and tier.breaker.state == BreakerState.CLOSED


async def test_a_store_without_conditional_puts_gets_head_then_put(s3, object_url, monkeypatch):
    tier = _tier(s3, object_url)
    requests = _Requests(monkeypatch, refuse_conditional=True)
    key, data = os.urandom(16), _payload(1 << 20, 5)
    assert await tier.write(key, LAYOUT, "ns", memoryview(data)) == HEADER_BYTES + (1 << 20)
    assert tier.conditional_put is False and requests.puts == ["create", "overwrite"] and requests.heads == 1
    assert await tier.write(key, LAYOUT, "ns", memoryview(data)) == 0  # found by its HEAD
    assert requests.puts == ["create", "overwrite"] and requests.heads == 2
    dest = bytearray(1 << 20)
    assert await tier.read_into(key, memoryview(dest), layout_id=LAYOUT, payload_len=1 << 20)
    assert dest == data.tobytes()


@pytest.mark.parametrize("damage", ["payload_byte", "truncated", "header_byte"])
async def test_damaged_object_is_a_miss_and_is_deleted(s3, object_url, damage):
    tier = _tier(s3, object_url)
    key, data = os.urandom(16), _payload(1 << 20, 3)
    await tier.write(key, LAYOUT, "ns", memoryview(data))
    path = object_path(key)
    raw = bytearray(obstore.get(tier.store, path).bytes())
    if damage == "payload_byte":
        raw[HEADER_BYTES + 12345] ^= 0x40
    elif damage == "truncated":
        raw = raw[: len(raw) - 4096]
    else:
        raw[40] ^= 0x01
    obstore.put(tier.store, path, bytes(raw))  # behind the tier's back
    dest = bytearray(b"\xee" * len(data))
    assert not await tier.read_into(key, memoryview(dest), layout_id=LAYOUT, payload_len=len(data))
    assert tier.counters["corrupt_deleted"] == 1
    with pytest.raises(FileNotFoundError):
        obstore.head(tier.store, path)


async def test_wrong_layout_or_size_is_a_miss(s3, object_url):
    tier = _tier(s3, object_url)
    key, data = os.urandom(16), _payload(1 << 20, 4)
    await tier.write(key, LAYOUT, "ns", memoryview(data))
    dest = bytearray(len(data))
    assert not await tier.read_into(key, memoryview(dest), layout_id="ffff", payload_len=len(data))
    await tier.write(key, LAYOUT, "ns", memoryview(data))
    assert not await tier.read_into(key, memoryview(dest)[:1000], layout_id=LAYOUT, payload_len=1000)


async def test_missing_bucket_is_a_clear_error_at_start(s3):
    with pytest.raises(ConfigError, match="bucket does not exist"):
        await ObjectTier("s3://no-such-bucket/p", node="n", env=s3.env()).check()


async def test_bad_credentials_are_a_clear_error_at_start(s3, object_url):
    env = s3.env(AWS_SECRET_ACCESS_KEY="wrong-secret")
    with pytest.raises(ConfigError, match="refused our credentials"):
        await ObjectTier(object_url, node="n", env=env).check()


async def test_unreachable_store_opens_the_circuit_and_fails_fast(s3):
    env = s3.env(AWS_ENDPOINT_URL="http://127.0.0.1:9")  # discard port: nothing listens
    tier = ObjectTier(f"s3://{BUCKET}/x", node="n", env=env, timeout=1.0)
    await tier.check()  # not a config error: the tier starts with its circuit open
    assert tier.breaker.state is BreakerState.OPEN
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ObjectTierUnavailable, match="circuit open"):
        await tier.write(os.urandom(16), LAYOUT, "ns", memoryview(b"x" * 100))
    assert loop.time() - t0 < 0.1


@pytest.mark.parametrize("scheme", ["memory", "file"])
async def test_embedded_stores_round_trip(tmp_path, scheme):
    url = "memory://" if scheme == "memory" else f"file://{tmp_path}/objects"
    tier = ObjectTier(url, node="n")
    await tier.check()
    key, data = os.urandom(16), _payload(3 << 20, 5)
    await tier.write(key, LAYOUT, "ns", memoryview(data))
    dest = bytearray(len(data))
    assert await tier.read_into(key, memoryview(dest), layout_id=LAYOUT, payload_len=len(data))
    assert dest == data.tobytes()
    assert await tier.delete(key) == HEADER_BYTES + len(data)
    assert await tier.read_header(key) is None


@pytest.mark.parametrize("url", ["s3://", "ftp://x/y", "file://relative/dir"])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError, match="object_url"):
        ObjectTier(url, node="n")
