"""Who may talk to a real daemon subprocess, and what a namespace-bound connection can reach.

The tests run as one uid, so the peer check is exercised by configuring allow-lists that leave
that uid out (refused) or name it (admitted); SO_PEERCRED itself is real: the daemon reads this
process's pid and uid from the kernel. Namespace bindings come from the uid mapping in the
config and from a client's own `hello`."""
from __future__ import annotations

import os
import pwd
import socket
import stat
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, DaemonFactory, payload_for
from tierd.client import Client
from tierd.errors import NotFoundError, PermissionDeniedError
from tierd.keys import chunk_keys
from tierd.daemon.launch import DaemonProcess
from tierd.rpc import frames

UID = os.getuid()
OTHER_UID = 54321 if UID != 54321 else 54322  # a uid this test process does not have


def _metrics(banner: str) -> str:
    port = int(banner.rsplit(":", 1)[1].rstrip(")\n "))
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


# ------------------------------------------------------------------ socket mode, metrics bind


def test_socket_mode_is_applied(daemon_factory: DaemonFactory) -> None:
    private = daemon_factory(name="p")
    assert stat.S_IMODE(os.stat(private.socket).st_mode) == 0o600
    group = daemon_factory(name="g", extra=("--socket-mode", "0660"))
    assert stat.S_IMODE(os.stat(group.socket).st_mode) == 0o660


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as the kernel writes them) listening on `port`, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                local, state = row.split()[1], row.split()[3]
                addr, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(addr)
    return found


def test_metrics_listen_on_loopback_only_by_default(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra=("--metrics-port", "0"))
    assert "metrics on 127.0.0.1:" in d.banner
    port = int(d.banner.rsplit(":", 1)[1].rstrip(")\n "))
    assert _listening(port) == ["0100007F"]  # 127.0.0.1 only: no 0.0.0.0, no IPv6 wildcard


# ------------------------------------------------------------------ the peer check


def test_a_peer_outside_the_allow_list_gets_one_error_and_is_hung_up_on(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra=("--allow-uids", str(OTHER_UID), "--metrics-port", "0"))
    with pytest.raises(PermissionDeniedError) as info:
        Client.connect(d.socket)
    message = str(info.value)
    assert f"pid {os.getpid()}, uid {UID}" in message  # what the kernel reported about this process
    assert "allow_uids" in message and str(OTHER_UID) in message

    # On the wire: one error frame without waiting for a request, then the end of the stream.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(d.socket)
    reply = frames.recv_frame(raw)
    assert reply["ok"] is False and reply["id"] is None
    assert reply["error"]["code"] == "PermissionDeniedError"
    raw.sendall(frames.pack({"id": 1, "op": "stat"}))  # ignored: nothing is served to this peer
    assert raw.recv(1) == b""
    raw.close()

    assert "tierd_refused_connections_total 2.0" in _metrics(d.banner)
    assert d.log().count("refused a connection") == 2


def test_the_allow_list_admits_the_users_it_names(daemon_factory: DaemonFactory) -> None:
    me = pwd.getpwuid(UID).pw_name
    d = daemon_factory(extra=("--allow-uids", f"{OTHER_UID},{me}"))  # by name
    with Client.connect(d.socket, map_arena=False) as c:
        st = c.stat()
        assert st["refused_connections"] == 0
        assert st["config"]["allow_uids"] == f"{OTHER_UID},{UID}"


def test_by_default_only_the_daemons_own_user_is_admitted(daemon: DaemonProcess) -> None:
    with Client.connect(daemon.socket, map_arena=False) as c:
        st = c.stat()
    assert st["config"]["allow_uids"] == "self" and st["refused_connections"] == 0
    assert st["namespace"] is None  # an unmapped user's connections see every namespace


# ------------------------------------------------------------------ namespace binding


def _put(c: Client, namespace: str, seed: int, n: int = 3) -> list[bytes]:
    keys = chunk_keys(SMALL, np.arange(256 * n) + seed, namespace=namespace)
    assert c.put_chunks(SMALL, keys, [payload_for(k, SMALL.chunk_bytes) for k in keys], namespace=namespace) == n
    return keys


def test_a_bound_connection_cannot_reach_another_namespace(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra=("--metrics-port", "0"))
    with Client.connect(d.socket) as admin:
        a = _put(admin, "tenantA", 0)
        b = _put(admin, "tenantB", 10_000)
    with Client.connect(d.socket, namespace="tenantA") as c, Client.connect(d.socket) as admin:
        assert c.namespace == "tenantA" and c.stat()["namespace"] == "tenantA"

        # read: lookup and get see B's chunks as misses
        assert c.lookup(a).prefix == 3 and c.lookup(b).prefix == 0 and c.lookup(b).tiers == [None] * 3
        assert c.lookup(a + b).prefix == 3
        assert c.get_chunks(SMALL, b) == []
        with c.get(SMALL, a + b, prefix_only=False) as lease:
            assert lease.slots[3:] == [None] * 3 and lease.count == 3
        assert c.get_chunks(SMALL, a) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in a]
        explained = c._call("explain", keys=b)
        assert [row["tier"] for row in explained["chunks"]] == [None] * 3 and explained["prefix"] == 0

        # list, inspect
        assert {row["key"] for row in c.ls()} == {k.hex() for k in a}
        with pytest.raises(PermissionDeniedError, match="bound to namespace 'tenantA'"):
            c.ls(namespace="tenantB")
        with pytest.raises(NotFoundError, match=f"key {b[0].hex()} is not stored"):
            c.inspect(b[0])
        assert c.inspect(a[0])["namespace"] == "tenantA"

        # put: into its own namespace (the default once bound), never another
        own = _put(c, "tenantA", 20_000)
        more = chunk_keys(SMALL, np.arange(256) + 30_000, namespace="tenantA")
        assert c.put_chunks(SMALL, more, [payload_for(more[0], SMALL.chunk_bytes)]) == 1  # no namespace given
        with pytest.raises(PermissionDeniedError):
            c.put(SMALL, chunk_keys(SMALL, np.arange(256) + 40_000, namespace="tenantB"), "tenantB")

        # pin, evict
        assert c.pin(b) == 0 and c.unpin(b) == 0 and c.pin(a) == 3 and c.unpin(a) == 3
        assert c.evict(keys=b)["evicted"] == 0
        with pytest.raises(PermissionDeniedError):
            c.evict(namespace="tenantB")
        assert c.evict(everything=True)["evicted"] == 3 + 3 + 1  # "all" of a bound connection: its own
        assert admin.lookup(b).prefix == 3  # B untouched throughout
        assert admin.lookup(a + own + more).prefix == 0

        # the binding cannot be changed or widened
        with pytest.raises(PermissionDeniedError, match="cannot be changed"):
            c._call("hello", namespace="tenantB")
        assert c._call("hello", namespace="tenantA")["namespace"] == "tenantA"
        denied = c.stat()["namespace_denied"]
        assert denied == 4
    assert "tierd_namespace_denied_total 4.0" in _metrics(d.banner)


def test_the_config_binds_a_users_connections(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    nvme = tmp_path / "shared-nvme"
    first = daemon_factory(name="a", nvme_dir=nvme, extra=("--namespaces", f"{OTHER_UID}:tenantA"))
    with Client.connect(first.socket) as admin, Client.connect(first.socket, namespace="tenantA") as writer:
        with pytest.raises(PermissionDeniedError, match="tenant's .*connect with namespace='tenantA'"):
            _put(admin, "tenantA", 0)  # a tenant's chunks are written under its own keys only
        a = _put(writer, "tenantA", 0)
        b = _put(admin, "tenantB", 10_000)
    assert first.stop() == 0  # both namespaces' chunks are written down to NVMe

    d = daemon_factory(name="b", nvme_dir=nvme, extra=("--namespaces", f"{UID}:tenantA"))
    with Client.connect(d.socket) as c:  # no namespace asked for: the daemon binds it
        assert c.namespace == "tenantA"
        assert c.lookup(a).tiers == ["nvme"] * 3 and c.lookup(b).prefix == 0
        assert c.get_chunks(SMALL, a) == [payload_for(k, SMALL.chunk_bytes).tobytes() for k in a]
        assert c.get_chunks(SMALL, b) == []
        assert {row["namespace"] for row in c.ls()} == {"tenantA"} and len(c.ls()) == 3
        assert c.stat()["config"]["namespaces"] == f"{UID}:tenantA"
    with pytest.raises(PermissionDeniedError, match="bound to namespace 'tenantA'"):
        Client.connect(d.socket, namespace="tenantB")  # a client cannot widen what the daemon set
    with Client.connect(d.socket, namespace="tenantA", map_arena=False) as c:  # repeating it is fine
        assert c.namespace == "tenantA"


def test_a_refused_connection_leaks_nothing(daemon_factory: DaemonFactory) -> None:
    """Many refused peers in a row: each is closed, none holds a session."""
    d = daemon_factory(extra=("--allow-uids", str(OTHER_UID), "--metrics-port", "0"))
    for _ in range(20):
        with pytest.raises(PermissionDeniedError):
            Client.connect(d.socket, map_arena=False)
    text = _metrics(d.banner)
    assert "tierd_refused_connections_total 20.0" in text
    deadline = time.monotonic() + 10
    while "tierd_sessions 0.0" not in text:  # sessions are never opened for refused peers
        assert time.monotonic() < deadline, text
        text = _metrics(d.banner)


def test_binding_rejects_an_empty_namespace_and_async_clients_bind_too(daemon: DaemonProcess) -> None:
    import asyncio

    from tierd.client import AsyncClient
    from tierd.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="namespace ''"):
        Client.connect(daemon.socket, namespace="", map_arena=False)

    async def scenario() -> list[str]:
        c = await AsyncClient.connect(daemon.socket, namespace="tenantA")
        try:
            keys = chunk_keys(SMALL, np.arange(256) + 7, namespace="tenantA")
            async with await c.put(SMALL, keys) as batch:  # no namespace given: the bound one
                for i in batch.reserved:
                    batch.view(i)[:] = payload_for(keys[i], SMALL.chunk_bytes)
            with pytest.raises(PermissionDeniedError):
                await c.put(SMALL, keys, "tenantB")
            return [row["namespace"] for row in (await c.call("ls"))["chunks"]]
        finally:
            await c.close()

    assert asyncio.run(scenario()) == ["tenantA"]


def test_a_namespace_is_at_most_255_utf8_bytes_whatever_the_entry(daemon: DaemonProcess) -> None:
    """One limit, in UTF-8 bytes, for a binding and for a put: "€" is 3 bytes, so 100 of them
    (300 bytes) are refused with the limit named, and 85 (255 bytes) are accepted and their
    chunks served. A refused put stores nothing."""
    from tierd.errors import InvalidArgumentError

    too_long, longest = "€" * 100, "€" * 85
    assert (len(too_long.encode()), len(longest.encode())) == (300, 255)
    limit = "is 300 bytes in UTF-8: use at most 255 bytes"
    with pytest.raises(InvalidArgumentError, match=limit):
        Client.connect(daemon.socket, namespace=too_long, map_arena=False)
    keys = chunk_keys(SMALL, np.arange(256 * 2) + 13, namespace=longest)
    payloads = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    with Client.connect(daemon.socket) as c:
        with pytest.raises(InvalidArgumentError, match=limit):
            c.put(SMALL, keys, too_long)
        assert c.ls() == [] and c.stat()["reservations"] == 0
    with Client.connect(daemon.socket, namespace=longest) as bound:
        assert bound.namespace == longest
        assert bound.put_chunks(SMALL, keys, payloads) == 2  # the bound namespace by default
        assert {row["namespace"] for row in bound.ls()} == {longest}
        assert bound.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
