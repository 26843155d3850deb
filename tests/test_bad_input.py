"""Bad input at the RPC boundary: each gets a clear error or a clean close, the daemon keeps
serving other clients, and nothing already stored changes."""
from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import Client
from tierd.errors import (
    AlreadyStoredError,
    InvalidArgumentError,
    LayoutMismatchError,
    NotReservedError,
    UnknownLayoutError,
)
from tierd.keys import chunk_keys
from tierd.rpc import frames

KEYS = chunk_keys(SMALL, np.arange(256 * 3))


@pytest.fixture
def stored(daemon):
    """A daemon holding three known chunks, and a check that they are unchanged."""
    with Client.connect(daemon.socket) as c:
        c.put_chunks(SMALL, KEYS, [payload_for(k, SMALL.chunk_bytes) for k in KEYS])

    def unchanged() -> None:
        with Client.connect(daemon.socket) as c:
            assert c.get_chunks(SMALL, KEYS) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in KEYS]
            st = c.stat()
            assert st["chunks"] == 3 and st["reservations"] == 0 and st["leases"] == 0

    return daemon, unchanged


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_truncated_frame_then_close(stored):
    daemon, unchanged = stored
    s = _raw(daemon.socket)
    s.sendall(struct.pack(">I", 100) + b"\x81\xa2op")  # header promises 100 bytes, 4 arrive
    s.close()
    unchanged()


def test_oversized_frame_gets_error_and_close(stored):
    daemon, unchanged = stored
    s = _raw(daemon.socket)
    s.sendall(struct.pack(">I", 1 << 30))
    reply = frames.recv_frame(s)
    assert reply["ok"] is False and reply["error"]["code"] == "ProtocolError"
    assert "exceeds the limit" in reply["error"]["message"]
    assert _closed(s)
    unchanged()


def test_garbage_body_gets_error(stored):
    daemon, unchanged = stored
    s = _raw(daemon.socket)
    s.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    reply = frames.recv_frame(s)
    assert reply["error"]["code"] == "ProtocolError"
    unchanged()


@pytest.mark.parametrize(
    "request_, code, text",
    [
        ([1, 2, 3], "ProtocolError", "must be a map"),
        ({"op": "lookup", "keys": []}, "ProtocolError", "request id"),
        ({"id": 1, "op": "format_disk"}, "ProtocolError", "unknown op 'format_disk'"),
        ({"id": 1, "op": "lookup"}, "InvalidArgumentError", "missing argument 'keys'"),
        ({"id": 1, "op": "lookup", "keys": "abc"}, "InvalidArgumentError", "must be list"),
        ({"id": 1, "op": "lookup", "keys": ["abc"]}, "InvalidArgumentError", "list of bytes"),
        ({"id": 1, "op": "lookup", "keys": [b"short"]}, "InvalidArgumentError", "16-byte"),
        ({"id": 1, "op": "lookup", "keys": [], "extra": 1}, "InvalidArgumentError", "unknown argument"),
        ({"id": 1, "op": "release", "lease": "x"}, "InvalidArgumentError", "must be int"),
        ({"id": 1, "op": "release", "lease": 999}, "NotFoundError", "lease 999"),
        ({"id": 1, "op": "acquire", "layout_id": "feedbeef", "keys": []}, "UnknownLayoutError", "not registered"),
        ({"id": 1, "op": "register_layout", "layout": {"model": "m"}}, "InvalidArgumentError", "layout"),
        ({"id": 1, "op": "register_layout", "layout": {**SMALL.to_dict(), "dtype": "float128"}},
         "InvalidArgumentError", "layout.dtype"),
        ({"id": 1, "op": "evict"}, "InvalidArgumentError", "evict needs"),
        ({"id": 1, "op": "evict", "all": True, "tier": "tape"}, "InvalidArgumentError", "tier 'tape'"),
        ({"id": 1, "op": "ls", "sort": "color"}, "InvalidArgumentError", "sort 'color'"),
        ({"id": 1, "op": "inspect", "key": b"\x00" * 16}, "NotFoundError", "not stored"),
    ],
)
def test_bad_requests_get_clear_errors_and_connection_survives(stored, request_, code, text):
    daemon, unchanged = stored
    s = _raw(daemon.socket)
    s.sendall(frames.pack(request_))
    reply = frames.recv_frame(s)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert text in reply["error"]["message"]
    s.sendall(frames.pack({"id": 2, "op": "ping"}))  # the same connection still works
    assert frames.recv_frame(s) == {"id": 2, "ok": True, "result": {"pong": True}}
    s.close()
    unchanged()


def test_store_level_misuse(stored):
    daemon, unchanged = stored
    other = chunk_keys(SMALL, np.arange(256 * 2) + 5)
    with Client.connect(daemon.socket) as c, Client.connect(daemon.socket) as c2:
        layout_id = c.register_layout(SMALL)
        with pytest.raises(UnknownLayoutError):
            c._call("reserve", layout_id="0" * 16, namespace="default", keys=other, nbytes=SMALL.chunk_bytes)
        with pytest.raises(LayoutMismatchError, match="does not match layout"):
            c._call("reserve", layout_id=layout_id, namespace="default", keys=other, nbytes=SMALL.chunk_bytes - 1)
        with pytest.raises(InvalidArgumentError, match="namespace"):
            c._call("reserve", layout_id=layout_id, namespace="", keys=other, nbytes=SMALL.chunk_bytes)
        with pytest.raises(NotReservedError):
            c._call("commit", keys=other)
        with pytest.raises(AlreadyStoredError):
            c._call("commit", keys=KEYS[:1])
        batch = c2.put(SMALL, other)  # reserved by another connection
        with pytest.raises(NotReservedError):
            c._call("commit", keys=other)
        with pytest.raises(InvalidArgumentError, match="twice"):
            c2._call("commit", keys=[other[0], other[0]])
        with pytest.raises(NotReservedError):  # all-or-nothing: the good key is not committed either
            c2._call("commit", keys=[other[0], chunk_keys(SMALL, np.arange(256) + 99)[0]])
        assert c.lookup(other).prefix == 0
        batch.abort()
        assert c.lookup(other).prefix == 0
    unchanged()


def test_other_clients_are_served_while_one_misbehaves(stored):
    daemon, unchanged = stored
    bad = _raw(daemon.socket)
    bad.sendall(struct.pack(">I", 50) + b"x")  # a frame that never completes
    unchanged()  # served while the bad client's frame hangs
    bad.close()


def test_pipelined_release_of_unknown_lease_is_logged_not_raised(stored, caplog):
    daemon, unchanged = stored
    with Client.connect(daemon.socket) as c:
        c._post("release", lease=424242)  # sent without waiting for the reply
        with caplog.at_level("WARNING", logger="tierd.client"):
            assert c.stat()["leases"] == 0  # the next call reads the pending reply first
        assert "lease 424242" in caplog.text
    unchanged()
