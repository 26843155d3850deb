"""One mapping of each arena region per process, shared by all its connections (issue 23, defect 3).

Old code: every `Client` connection mapped the regions it received itself, so a vLLM worker (two
connections: loads and saves) held the arena twice, at two addresses, and its GPU connector
registered it with `cudaHostRegister` twice. Now the process maps each region's file once, keyed
by the file's identity (`tierd.client.arena.RegionKey`), and unmaps it when its last holder closes.

Mappings are counted in /proc/self/maps by the region file's device and inode: what the kernel
says this process has mapped, not what the table believes.
"""
from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL, payload_for
from tierd.client import AsyncClient, Client
from tierd.client.arena import RegionKey, mapped_regions
from tierd.errors import PermissionDeniedError
from tierd.keys import chunk_keys

#: A tenant region besides the shared one, so "every region" means more than one.
TENANT = ("--namespaces", "65532:a")


def mappings_of(key: RegionKey) -> int:
    """How many mappings of the region's file this process has (lines of /proc/self/maps)."""
    dev = f"{os.major(key.dev):02x}:{os.minor(key.dev):02x}"
    count = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3] == dev and int(fields[4]) == key.ino:
            count += 1
    return count


def addresses(c: Client | AsyncClient) -> list[int]:
    assert c.arena is not None
    return [a.ctypes.data for a in c.arena.arrays]


def test_two_connections_of_one_process_share_every_region_at_one_address(daemon_factory) -> None:
    """Old code: the two clients' arrays had different addresses and /proc/self/maps held two
    mappings of each region's file (the address assertion failed)."""
    d = daemon_factory(extra=TENANT)
    with Client.connect(d.socket, name="loads") as c1, Client.connect(d.socket, name="saves") as c2:
        assert c1.arena is not None and c2.arena is not None
        assert sorted(c1.arena.namespaces, key=str) == [None, "a"]  # unbound: every region
        assert addresses(c1) == addresses(c2)
        assert c1.arena.keys == c2.arena.keys and len(set(c1.arena.keys)) == 2
        for key, array in zip(c1.arena.keys, c1.arena.arrays):
            assert key.size == array.nbytes
            assert mappings_of(key) == 1
            assert mapped_regions()[key] == 2


def test_a_put_through_one_connection_is_read_byte_exact_through_the_other(daemon_factory) -> None:
    """Old code: the bytes arrived (one file), but the get's view of the slot was at another
    address than the put's (the address assertion failed)."""
    d = daemon_factory()
    key = chunk_keys(SMALL, np.arange(SMALL.chunk_tokens) + 3)[0]
    data = payload_for(key, SMALL.chunk_bytes)
    with Client.connect(d.socket) as saver, Client.connect(d.socket) as loader:
        with saver.put(SMALL, [key]) as batch:
            assert batch.reserved == [0]
            written = batch.view(0)
            np.copyto(written, data)
        with loader.get(SMALL, [key]) as lease:
            assert lease.count == 1 and lease.slots[0] == batch.slots[0]  # still in its DRAM slot
            read = lease.view(0)
            assert read.ctypes.data == written.ctypes.data
            assert read.tobytes() == data.tobytes()


def test_closing_one_connection_keeps_the_others_views_valid(daemon_factory) -> None:
    """Old code: the mapping count before the close was two (one per connection), not one.
    The rest guards the reference count: a shared mapping unmapped by the first close would
    leave the second client's views dangling (a crash reading them)."""
    d = daemon_factory()
    keys = chunk_keys(SMALL, np.arange(SMALL.chunk_tokens * 2))
    data = [payload_for(k, SMALL.chunk_bytes) for k in keys]
    first = Client.connect(d.socket)
    second = Client.connect(d.socket)
    try:
        assert first.put_chunks(SMALL, keys, data) == 2
        (region,) = second.arena.keys
        assert mappings_of(region) == 1
        with second.get(SMALL, keys) as lease:
            views = [lease.view(i) for i in range(lease.count)]
            first.close()
            assert mapped_regions()[region] == 1 and mappings_of(region) == 1
            assert [v.tobytes() for v in views] == [x.tobytes() for x in data]
            fresh = [lease.view(i).tobytes() for i in range(lease.count)]  # new views after the close
            assert fresh == [x.tobytes() for x in data]
        assert second.get_chunks(SMALL, keys) == [x.tobytes() for x in data]
        with pytest.raises(PermissionDeniedError, match="closed"):  # the closed one has no views
            first.view(0, 16)
    finally:
        first.close()
        second.close()


def test_closing_every_connection_unmaps_the_region_once_its_last_view_goes(daemon_factory) -> None:
    """Old code: two mappings while both were open (the first count assertion failed). The
    rest holds there too: the last close unmaps, or, while a caller still holds a view, the
    mapping stays until that view goes (closing tolerates the BufferError)."""
    d = daemon_factory()
    a, b = Client.connect(d.socket), Client.connect(d.socket)
    (region,) = a.arena.keys
    assert mappings_of(region) == 1
    a.close()
    a.close()  # idempotent: the second close drops no other connection's hold
    assert mapped_regions()[region] == 1 and mappings_of(region) == 1
    b.close()
    assert region not in mapped_regions() and mappings_of(region) == 0

    c = Client.connect(d.socket)
    assert c.arena.keys == [region] and mappings_of(region) == 1  # mapped again, afresh
    kept = c.view(c.arena.bases[0], 64)
    c.close()
    assert region not in mapped_regions()
    assert mappings_of(region) == 1 and kept.nbytes == 64  # the view keeps its mapping alive
    del kept
    gc.collect()
    assert mappings_of(region) == 0


def test_a_client_dropped_without_close_releases_its_hold(daemon_factory) -> None:
    """Old code: no table, and two mappings while both were open (the first count failed).
    Guards the table: a client collected unclosed must not keep the region mapped forever."""
    d = daemon_factory()
    keeper = Client.connect(d.socket)
    dropped = Client.connect(d.socket)
    (region,) = keeper.arena.keys
    assert mappings_of(region) == 1 and mapped_regions()[region] == 2
    dropped._closer()  # hang up without close(), then drop the object
    del dropped
    gc.collect()
    assert mapped_regions()[region] == 1
    keeper.close()
    assert mappings_of(region) == 0


def test_after_a_daemon_restart_clients_map_the_new_files_not_the_old_ones(daemon_factory) -> None:
    """Old code: the two clients of the restarted daemon had two mappings at two addresses (the
    sharing assertion failed). The rest guards the key: a mapping of the old daemon's files,
    still held here, must never be handed to a client of the new daemon."""
    d = daemon_factory(name="r")
    old = Client.connect(d.socket)
    (old_region,) = old.arena.keys
    old_view = old.view(old.arena.bases[0], 16)
    old_view[:] = 7
    d.stop()
    d2 = daemon_factory(name="r")
    assert d2.socket == d.socket
    try:
        with Client.connect(d2.socket) as n1, Client.connect(d2.socket) as n2:
            assert n1.arena.keys == n2.arena.keys and addresses(n1) == addresses(n2)
            (new_region,) = n1.arena.keys
            assert new_region != old_region and addresses(n1) != addresses(old)
            assert mappings_of(new_region) == 1 and mappings_of(old_region) == 1
            assert n1.view(n1.arena.bases[0], 16).tobytes() == bytes(16)  # the new daemon's zeroed file
            assert old_view.tobytes() == bytes([7] * 16)  # the old file, still mapped and alive
    finally:
        old.close()
    del old_view
    gc.collect()
    assert mappings_of(old_region) == 0 and old_region not in mapped_regions()


def test_a_tenant_connection_shares_its_region_and_still_sees_no_other(daemon_factory) -> None:
    """Old code: the tenant-bound connection's array of region "a" was at another address than
    the unbound one's (the address assertion failed). Sharing must not widen what a tenant holds:
    a view of the shared region still fails."""
    d = daemon_factory(extra=TENANT)
    with Client.connect(d.socket) as everything, Client.connect(d.socket, namespace="a") as tenant:
        assert tenant.arena.namespaces == ["a"]
        i = everything.arena.namespaces.index("a")
        assert tenant.arena.keys == [everything.arena.keys[i]]
        assert addresses(tenant) == [everything.arena.arrays[i].ctypes.data]
        shared = everything.arena.bases[everything.arena.namespaces.index(None)]
        with pytest.raises(PermissionDeniedError, match="another namespace"):
            tenant.view(shared, 16)
        own = tenant.arena.bases[0]
        tenant.view(own, 16)[:] = 42
        assert everything.view(own, 16).tobytes() == bytes([42] * 16)
        tenant.view(own, 16)[:] = 0
        assert mapped_regions()[tenant.arena.keys[0]] == 2
        assert mapped_regions()[everything.arena.keys[everything.arena.namespaces.index(None)]] == 1


def test_connections_made_from_several_threads_share_one_mapping(daemon_factory) -> None:
    """Old code: eight mappings, eight addresses (the address assertion failed). Guards the
    table's lock: threads connecting at once must not map a region twice or lose a holder."""
    d = daemon_factory()
    clients: list[Client] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def connect() -> None:
        try:
            barrier.wait()
            clients.append(Client.connect(d.socket))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors and len(clients) == 8
        assert len({tuple(addresses(c)) for c in clients}) == 1
        (region,) = clients[0].arena.keys
        assert mappings_of(region) == 1 and mapped_regions()[region] == 8
    finally:
        closers = [threading.Thread(target=c.close) for c in clients]
        for t in closers:
            t.start()
        for t in closers:
            t.join()
    assert region not in mapped_regions() and mappings_of(region) == 0


def test_an_async_connection_shares_the_mapping_of_a_blocking_one(daemon_factory) -> None:
    """Old code: the async client's hand-shake mapped the arena again (another address)."""
    d = daemon_factory()

    async def both() -> None:
        with Client.connect(d.socket) as blocking:
            ac = await AsyncClient.connect(d.socket)
            try:
                assert addresses(ac) == addresses(blocking) and ac.arena.keys == blocking.arena.keys
                assert mapped_regions()[blocking.arena.keys[0]] == 2
            finally:
                await ac.close()
            assert mapped_regions()[blocking.arena.keys[0]] == 1

    asyncio.run(both())


def test_a_client_collected_inside_a_table_operation_releases_without_deadlock(daemon_factory, monkeypatch) -> None:
    """Old code had no table. A table under a plain lock would hang here: the garbage collector
    runs an unclosed client's finalizer (its release) in the thread that is mapping a region
    under the lock, and the connect never returns (the join times out)."""
    import tierd.client.arena as arena

    first, second = daemon_factory(name="g1"), daemon_factory(name="g2")
    dropped = Client.connect(first.socket)
    (region,) = dropped.arena.keys
    dropped._closer()
    dropped.cycle = dropped  # only the cyclic collector can free it
    mapped = arena.map_fd

    def collect_then_map(*args, **kwargs):  # a collection that happens to run mid-operation
        gc.collect()
        return mapped(*args, **kwargs)

    monkeypatch.setattr(arena, "map_fd", collect_then_map)
    gc.disable()
    try:
        del dropped
        out: list[Client] = []
        t = threading.Thread(target=lambda: out.append(Client.connect(second.socket)), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "connect deadlocked on the table's lock"
    finally:
        gc.enable()
    (client,) = out
    try:
        assert region not in mapped_regions() and mappings_of(region) == 0
        assert mapped_regions()[client.arena.keys[0]] == 1
    finally:
        client.close()
