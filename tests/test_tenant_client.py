"""Tenants of other uids, allowed by `--allow-uids` and bound by `--namespaces` (issue 20, item 5):
each works end to end through its own region of the arena, received over the socket, and holds no
byte of anyone else's memory; a key another tenant holds is neither a hit nor "stored already".

Old code: the arena was one 0600 file in /dev/shm that every client mapped whole, so another
uid could not put or get at all, a same-uid client read every namespace's chunks, and a key
computed with another namespace's seed reached that namespace's chunk.

The other users are played by forked children that drop to uids 65532 and 65533 (the tests run
as root, and the interpreter under /root cannot be started by those uids).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from connectors.link import DaemonLink
from tests.conftest import SMALL, payload_for
from tierd.cli import build_parser, main
from tierd.client import Client
from tierd.errors import PermissionDeniedError
from tierd.keys import chunk_keys

build_parser()  # imports every command's module now: the child's uid cannot read site-packages under /root

TENANT_A, TENANT_B = 65532, 65533
TENANTS = ("--allow-uids", f"self,{TENANT_A},{TENANT_B}", "--namespaces", f"{TENANT_A}:a,{TENANT_B}:b",
           "--socket-mode", "0666")


def as_user(uid: int, work: Callable[[], dict]) -> dict:
    """Run `work` in a child process of `uid`; its JSON-able result (or the error it raised)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                result = work()
            except BaseException as exc:  # reported to the parent, which fails the test
                result = {"raised": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    result = json.loads(out)
    assert "raised" not in result, result["raised"]
    return result


def _target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""


def payload(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, SMALL.chunk_bytes, dtype=np.uint8).tobytes()


def test_a_tenant_of_another_uid_works_through_its_own_region_only(daemon_factory, short_dir: Path) -> None:
    os.chmod(short_dir, 0o711)  # the other users must reach the socket
    shm_before = set(os.listdir("/dev/shm"))
    d = daemon_factory(extra=TENANTS)
    assert set(os.listdir("/dev/shm")) == shm_before  # the arena has no name anyone could open
    key = chunk_keys(SMALL, np.arange(256), namespace="a")[0]
    with Client.connect(d.socket, namespace="a") as writer:  # the operator, writing for tenant a
        writer.put_chunks(SMALL, [key], [payload_for(key, SMALL.chunk_bytes)])
        daemon_pid = writer.info["pid"]
        regions = writer.stat()["arena_regions"]
    shared = next(r for r in regions if r["namespace"] is None)
    theirs = next(r for r in regions if r["namespace"] == "b")
    # the daemon's descriptors of its regions (unnamed /dev/shm files): root may open them...
    fds = [f"/proc/{daemon_pid}/fd/{n}" for n in os.listdir(f"/proc/{daemon_pid}/fd")]
    arena_fds = [p for p in fds if _target(p).startswith("/dev/shm/")]
    assert len(arena_fds) >= 3  # each region: its descriptor (and the mapping's own duplicate)
    os.close(os.open(arena_fds[0], os.O_RDONLY))

    def tenant() -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["ls", "--socket", d.socket, "--json"])
        result: dict[str, Any] = {"ls_status": status, "ls": out.getvalue()}
        with Client.connect(d.socket) as c:
            assert c.arena is not None
            result["namespace"], result["mapped"] = c.namespace, c.arena.namespaces
            result["prefix"] = c.lookup([key]).prefix
            result["got"] = c.get_chunks(SMALL, [key])[0] == payload_for(key, SMALL.chunk_bytes).tobytes()
            mine = chunk_keys(SMALL, np.arange(256 * 2) + 5, namespace="a")
            result["stored"] = c.put_chunks(SMALL, mine, [payload(1), payload(2)])
            result["back"] = c.get_chunks(SMALL, mine) == [payload(1), payload(2)]
            refused = []
            for region in (shared, theirs):  # another namespace's memory: not in this process
                try:
                    c.view(region["base"], 16)
                except PermissionDeniedError as exc:
                    refused.append(str(exc))
            result["refused"] = refused
        opened = 0  # ...the tenant may not: it holds only what the daemon sent it
        for path in arena_fds:
            try:
                os.close(os.open(path, os.O_RDONLY))
                opened += 1
            except OSError:
                pass
        result["opened"] = opened
        return result

    r = as_user(TENANT_A, tenant)
    assert r["ls_status"] == 0 and key.hex() not in r["ls"]  # ls shows the tenant's store keys
    assert r["namespace"] == "a" and r["mapped"] == ["a"]
    assert r["prefix"] == 1 and r["got"] and r["stored"] == 2 and r["back"]
    assert len(r["refused"]) == 2 and all("belong to another namespace" in m for m in r["refused"])
    assert r["opened"] == 0
    with Client.connect(d.socket) as owner:
        st = owner.stat()
        assert st["leases"] == 0 and st["reservations"] == 0
        assert {row["namespace"] for row in owner.ls()} == {"a"} and len(owner.ls()) == 3


def test_a_key_another_tenant_holds_is_neither_a_hit_nor_stored_already(daemon_factory, short_dir: Path) -> None:
    os.chmod(short_dir, 0o711)
    d = daemon_factory(extra=TENANTS)
    theirs = chunk_keys(SMALL, np.arange(256 * 2) + 77, namespace="b")  # tenant b's keys
    fresh = chunk_keys(SMALL, np.arange(256 * 2) + 99, namespace="b")  # keys nobody holds
    # tenant b's engine: its connector's link binds every connection to the configured namespace
    link = DaemonLink(d.socket, SMALL, name="b-engine", namespace="b", map_arena=True)
    b = link.client()
    assert b is not None and b.namespace == "b" and b.arena is not None and b.arena.namespaces == ["b"]
    assert b.put_chunks(SMALL, theirs, [payload(10), payload(11)]) == 2

    def tenant_a() -> dict:
        with Client.connect(d.socket) as a:
            result: dict[str, Any] = {"lookup": a.lookup(theirs).prefix}
            with a.get(SMALL, theirs) as lease:
                result["leased"] = lease.count
            replies = {}
            for name, keys in (("held", theirs), ("fresh", fresh)):
                with a.put(SMALL, keys) as batch:  # what reserve answers must not tell the two apart
                    replies[name] = [s is not None for s in batch.slots]
                    for i in batch.reserved:
                        batch.view(i)[:] = np.frombuffer(payload(500 + i), dtype=np.uint8)
                    result[f"committed_{name}"] = batch.commit()
            result["replies"] = replies
            result["own"] = a.get_chunks(SMALL, theirs) == [payload(500), payload(501)]
        return result

    r = as_user(TENANT_A, tenant_a)
    assert r["lookup"] == 0 and r["leased"] == 0
    assert r["replies"]["held"] == r["replies"]["fresh"] == [True, True]
    assert r["committed_held"] == r["committed_fresh"] == 2
    assert r["own"]  # a's chunks under those keys are a's own
    # b is still served its own bytes, and its keys are still "stored already" to it
    assert b.get_chunks(SMALL, theirs) == [payload(10), payload(11)]
    with b.put(SMALL, theirs) as batch:
        assert batch.slots == [None, None]
    link.close()


def test_a_tenant_fills_its_own_region_and_evicts_only_its_own_chunks(daemon_factory) -> None:
    """16 MiB of DRAM, one tenant without a quota: 8 MiB for it, 8 MiB shared. A tenant writing
    far more than its region pushes out its own oldest chunks, never another namespace's."""
    d = daemon_factory(dram="16MiB", nvme="0", extra=("--namespaces", f"{TENANT_A}:a", "--dram-policy", "lru"))
    others = chunk_keys(SMALL, np.arange(256 * 4) + 1, namespace="default")
    with Client.connect(d.socket) as admin, Client.connect(d.socket, namespace="a") as a:
        sizes = {r["namespace"]: r["size"] for r in admin.stat()["arena_regions"]}
        assert sizes == {None: 8 << 20, "a": 8 << 20}
        assert admin.put_chunks(SMALL, others, [payload(i) for i in range(4)]) == 4
        many = chunk_keys(SMALL, np.arange(256 * 40) + 2, namespace="a")
        assert a.put_chunks(SMALL, many, [payload(100 + i) for i in range(40)]) == 40
        assert admin.lookup(others).prefix == 4  # untouched: they live in the shared region
        assert admin.get_chunks(SMALL, others) == [payload(i) for i in range(4)]
        held = a.lookup(many).tiers
        assert held[:-16].count("dram") == 0 and held[-16:] == ["dram"] * 16  # 16 x 512 KiB = its 8 MiB
