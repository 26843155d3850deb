"""The asyncio client against a real daemon: context-managed puts and leases."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import AsyncClient
from tierd.keys import chunk_keys


async def test_async_put_get_and_abort(daemon):
    c = await AsyncClient.connect(daemon.socket)
    try:
        keys = chunk_keys(SMALL, np.arange(256 * 3))
        async with await c.put(SMALL, keys) as batch:
            for i in batch.reserved:
                np.copyto(batch.view(i), payload_for(keys[i], SMALL.chunk_bytes))
        assert (await c.lookup(keys)).prefix == 3
        async with await c.get(SMALL, keys) as lease:
            assert lease.count == 3
            assert all(bytes(lease.view(i)) == payload_for(k, SMALL.chunk_bytes).tobytes() for i, k in enumerate(keys))
            assert (await c.call("stat"))["leases"] == 1
        assert (await c.call("stat"))["leases"] == 0
        other = chunk_keys(SMALL, np.arange(256 * 2) + 5)
        with pytest.raises(RuntimeError):
            async with await c.put(SMALL, other) as batch:
                raise RuntimeError("failed mid-copy")
        assert (await c.lookup(other)).prefix == 0 and (await c.call("stat"))["reservations"] == 0
        # several coroutines share one connection safely
        results = await asyncio.gather(*(c.lookup(keys) for _ in range(8)))
        assert {r.prefix for r in results} == {3}
    finally:
        await c.close()
