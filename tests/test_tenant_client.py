"""A client of another uid, allowed by `--allow-uids` and bound by `--namespaces` (issue 20, item
5a): it has the whole control plane, and a put or get fails with a clear error before anything is
reserved. Old code: `Client.connect` (and so every `tierd` command, `ls` included) mapped the
daemon's 0600 arena first and died with a PermissionError traceback.

The other user is played by a forked child that drops to uid 65532 (the tests run as root, and
the interpreter under /root cannot be started by that uid).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from tests.conftest import SMALL, payload_for
from tierd.cli import build_parser, main
from tierd.client import Client
from tierd.errors import PermissionDeniedError
from tierd.keys import chunk_keys

build_parser()  # imports every command's module now: the child's uid cannot read site-packages under /root

OTHER = 65532


def as_other_user(work: Callable[[], dict]) -> dict:
    """Run `work` in a child process of uid OTHER; its JSON-able result (or the error it raised)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(OTHER)
            os.setuid(OTHER)
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
    return json.loads(out)


def test_a_tenant_of_another_uid_has_the_control_plane_and_a_clear_no_for_data(daemon_factory, short_dir: Path):
    os.chmod(short_dir, 0o711)  # the other user must reach the socket
    d = daemon_factory(extra=("--allow-uids", f"self,{OTHER}", "--namespaces", f"{OTHER}:a", "--socket-mode", "0666"))
    key = chunk_keys(SMALL, np.arange(256), namespace="a")[0]
    with Client.connect(d.socket) as owner:
        owner.put_chunks(SMALL, [key], [payload_for(key, SMALL.chunk_bytes)], namespace="a")

    def tenant() -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["ls", "--socket", d.socket, "--json"])
        result = {"ls_status": status, "ls": out.getvalue()}
        with Client.connect(d.socket) as c:
            result["prefix"] = c.lookup([key]).prefix
            result["namespace"] = c.namespace
            try:
                c.put(SMALL, chunk_keys(SMALL, np.arange(256) + 5, namespace="a"))
            except PermissionDeniedError as exc:
                result["put"] = str(exc)
            try:
                c.get(SMALL, [key])
            except PermissionDeniedError as exc:
                result["get"] = str(exc)
            result["reservations"] = c.stat()["reservations"]
        return result

    r = as_other_user(tenant)
    assert "raised" not in r, r["raised"]
    assert r["ls_status"] == 0 and key.hex() in r["ls"]
    assert r["prefix"] == 1 and r["namespace"] == "a"
    for op in ("put", "get"):
        assert f"(uid {OTHER}) may not map the daemon's arena" in r[op]
    assert r["reservations"] == 0  # refused before anything was reserved
    with Client.connect(d.socket) as owner:
        assert owner.stat()["leases"] == 0
