"""Embedded mode: the same store and dispatcher in-process, no daemon, same behaviour."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.config import Config
from tierd.errors import NotReservedError
from tierd.keys import chunk_keys


@pytest.fixture
def client(tmp_path):
    c = Client.embedded(Config(socket=str(tmp_path / "unused.sock"), dram="8MiB", nvme_dir=str(tmp_path / "nvme"),
                               nvme="64MiB", calibrate=False))
    yield c
    c.close()


def test_embedded_round_trip_and_pressure(client):
    keys = chunk_keys(SMALL, np.arange(256 * 40))
    assert client.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys]) == 40
    res = client.lookup(keys)
    assert res.prefix == 40 and res.tiers.count("nvme") >= 24
    assert client.get_chunks(SMALL, keys[:5]) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in keys[:5]]
    with pytest.raises(NotReservedError):
        client._call("commit", keys=chunk_keys(SMALL, np.arange(256) + 3))


def test_embedded_exception_in_put_aborts(client):
    keys = chunk_keys(SMALL, np.arange(256 * 2) + 9)
    with pytest.raises(RuntimeError):
        with client.put(SMALL, keys) as batch:
            batch.view(0)[:] = 1
            raise RuntimeError("engine failed mid-copy")
    assert client.lookup(keys).prefix == 0
    assert client.stat()["reservations"] == 0
    assert client.store.alloc.used == 0  # the embedded store is the real one
