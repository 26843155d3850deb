"""Socket safety (issue 20, item 6): what the daemon deletes, where it listens by default, whom a
client talks to, and what the NVMe start-up scan removes.

The tests run as root; "another user" is uid 65532 (`OTHER`), made the owner of files with
os.chown, or a forked child that drops to it to play a fake daemon. Each test says how it failed
on the code before this change.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Callable, Iterator

import pytest

from connectors.link import DaemonLink
from tests.conftest import DaemonFactory
from tierd.client import AsyncClient, Client
from tierd.client.peer import expected_daemon_uid
from tierd.client.protocol import default_socket
from tierd.config import default_socket_path, load_config
from tierd.daemon.launch import DaemonProcess
from tierd.errors import ConfigError, DaemonUnavailableError
from tierd.tiers.nvme.format import probe_temp_name, write_temp_name

OTHER = 65532
ME = os.geteuid()
SERVE_ARGS = ["--dram", "64MiB", "--nvme", "0", "--no-calibrate"]

#: `serve(path, extra=())`: a started daemon on that socket path.
Serve = Callable[..., DaemonProcess]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start `tierd serve --socket PATH` on any path; every daemon started is stopped at the end."""
    started: list[DaemonProcess] = []

    def start(path: Path, extra: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(path, [*SERVE_ARGS, *extra], log_path=tmp_path / f"serve-{len(started)}.log")
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop(timeout=30)


def refused_start(serve: Serve, path: Path) -> str:
    """The daemon's output when its start fails; fails the test if it started serving."""
    try:
        serve(path)
    except RuntimeError as exc:  # "tierd exited with 1 before serving: <its stderr>"
        return str(exc)
    pytest.fail(f"the daemon started serving on {path}")


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a killed daemon leaves."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


# ------------------------------------------------------------------ what the daemon deletes


@pytest.mark.parametrize("kind", ["regular file", "directory", "symlink", "fifo"])
def test_what_is_not_a_socket_survives_a_failed_start(serve: Serve, short_dir: Path, tmp_path: Path,
                                                      kind: str) -> None:
    """Old code: connect() to anything that is not a listening socket fails, and the daemon then
    unlinked it as "a stale socket" and started: the user's file (or the symlink) was gone. A
    directory made unlink() raise IsADirectoryError: a traceback instead of a message."""
    path = short_dir / "d.sock"
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    if kind == "regular file":
        path.write_text("keep me")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(outside)
    else:
        os.mkfifo(path)

    out = refused_start(serve, path)

    assert f"socket {str(path)!r}" in out and "not a socket" in out
    assert {"regular file": "a regular file", "directory": "a directory", "symlink": "a symbolic link",
            "fifo": "a FIFO"}[kind] in out
    assert "Traceback" not in out
    assert os.path.lexists(path) and outside.read_text() == "keep me"
    if kind == "regular file":
        assert path.read_text() == "keep me"


def test_a_stale_socket_of_another_uid_is_not_removed(serve: Serve, short_dir: Path) -> None:
    """Old code: nobody listened, so the socket was unlinked whoever owned it, and the daemon
    started on the path."""
    path = short_dir / "d.sock"
    stale_socket(path)
    os.chown(path, OTHER, OTHER)

    out = refused_start(serve, path)

    assert f"a socket of uid {OTHER} is there" in out
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == OTHER


def test_a_stale_socket_of_our_own_uid_is_replaced(daemon_factory: DaemonFactory, short_dir: Path) -> None:
    """The one thing the daemon may remove (as before): its own user's socket that nobody listens on."""
    stale_socket(short_dir / "d.sock")
    d = daemon_factory()
    with Client.connect(d.socket, map_arena=False) as c:
        assert c.stat()


def test_shutdown_leaves_a_path_that_no_longer_names_its_socket(daemon_factory: DaemonFactory,
                                                                short_dir: Path) -> None:
    """Old code: SIGTERM unlinked the path whatever it named by then, here another user's file
    put there after the daemon's socket was moved away."""
    d = daemon_factory()
    path = Path(d.socket)
    os.rename(path, short_dir / "moved.sock")
    path.write_text("not the daemon's")

    assert d.stop() == 0

    assert path.read_text() == "not the daemon's"


def test_shutdown_removes_its_own_socket(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    assert d.stop() == 0
    assert not os.path.lexists(d.socket)


def test_a_start_that_fails_after_binding_removes_its_socket(serve: Serve, short_dir: Path,
                                                             tmp_path: Path) -> None:
    """The socket is now bound (the path held) before the store is built; a store that cannot be
    built (here an NVMe directory under a regular file) must not leave the socket behind. (A guard
    for the new order: the old code bound only after the store had started.)"""
    path = short_dir / "d.sock"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RuntimeError, match="NVMe tier directory"):
        serve(path, ("--nvme", "16MiB", "--nvme-dir", str(tmp_path / "a-file" / "chunks")))
    assert not os.path.lexists(path)


# ------------------------------------------------------------------ the default path


def test_the_default_never_names_a_socket_directly_in_tmp(tmp_path: Path) -> None:
    """Old code: `/tmp/tierd-<uid>.sock`, a name any user could bind first; and any writable
    $XDG_RUNTIME_DIR, even one group or others could write (or a symlink)."""
    fallback = f"/tmp/tierd-{os.getuid()}/tierd.sock"
    assert default_socket_path(env={}) == fallback
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(private)}) == str(private / "tierd.sock")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(shared)}) == fallback
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(theirs)}) == fallback
    link = tmp_path / "link"
    link.symlink_to(private)
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(link)}) == fallback


def test_client_and_daemon_resolve_the_same_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIERD_SOCKET", raising=False)
    for runtime in (None, tmp_path):
        if runtime is None:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        else:
            monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        assert default_socket() == load_config(env=dict(os.environ)).socket == default_socket_path()


def test_the_private_socket_directory_is_created_0700(serve: Serve, short_dir: Path) -> None:
    """Old code: a socket whose directory did not exist was refused ("directory ... does not
    exist"), so the default `/tmp/tierd-<uid>/tierd.sock` could not have worked."""
    path = short_dir / f"tierd-{ME}" / "tierd.sock"
    d = serve(path)
    st = os.lstat(path.parent)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == ME and stat.S_IMODE(st.st_mode) == 0o700
    with Client.connect(d.socket, map_arena=False) as c:
        assert c.stat()


@pytest.mark.parametrize("squat", ["another uid's", "mode 0777", "symlink"])
def test_a_squatted_private_socket_directory_is_refused(serve: Serve, short_dir: Path, tmp_path: Path,
                                                        squat: str) -> None:
    """Old code: the daemon bound its socket in whatever directory was there, so a user who made
    `/tmp/tierd-<uid>` first (or made it writable, or a symlink to a place of theirs) could
    replace the socket and take every client's requests."""
    directory = short_dir / f"tierd-{ME}"
    if squat == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        directory.symlink_to(target)
    else:
        directory.mkdir(mode=0o700)
        if squat == "mode 0777":
            directory.chmod(0o777)
        else:
            os.chown(directory, OTHER, OTHER)

    out = refused_start(serve, directory / "tierd.sock")

    assert f"socket directory {str(directory)!r}" in out and "refusing to use it" in out
    assert {"another uid's": f"belongs to uid {OTHER}", "mode 0777": "mode 0777",
            "symlink": "a symbolic link"}[squat] in out
    assert os.listdir(directory) == []


# ------------------------------------------------------------------ whom a client talks to


class FakeDaemon:
    """A process of uid `OTHER` listening at `path`: for each connection it reports how many
    bytes the client sent before hanging up (one recv, up to 10 s), then closes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(OTHER)
                os.setuid(OTHER)
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(str(path))
                server.listen(8)
                os.write(write, b"ready\n")
                server.settimeout(60)
                while True:
                    conn, _ = server.accept()
                    conn.settimeout(10)
                    try:
                        n = len(conn.recv(1 << 16))
                    except socket.timeout:
                        n = -1
                    conn.close()
                    os.write(write, f"{n}\n".encode())
            finally:
                os._exit(0)
        os.close(write)
        self._reports = os.fdopen(read)
        assert self._reports.readline() == "ready\n"

    def received(self) -> int:
        """Bytes the last connection sent (blocks until the fake has read them)."""
        line = self._reports.readline()
        assert line, "the fake daemon died"
        return int(line)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self._reports.close()


@pytest.fixture
def fake_daemon(short_dir: Path) -> Iterator[FakeDaemon]:
    home = short_dir / "other"
    home.mkdir()
    os.chown(home, OTHER, OTHER)
    short_dir.chmod(0o711)
    fake = FakeDaemon(home / "d.sock")
    yield fake
    fake.stop()


def test_client_refuses_a_daemon_of_another_uid_before_sending(fake_daemon: FakeDaemon) -> None:
    """Old code: the client sent its `hello` to whoever listened at the path (the fake got its
    bytes), then waited for an answer."""
    with pytest.raises(DaemonUnavailableError, match=f"runs as uid {OTHER} .*refusing to talk to it"):
        Client.connect(str(fake_daemon.path), timeout=5)
    assert fake_daemon.received() == 0


def test_async_client_refuses_a_daemon_of_another_uid_before_sending(fake_daemon: FakeDaemon) -> None:
    """Old code: as for `Client`, the hello went out (and the await then waited for a reply)."""
    async def connect() -> None:
        await asyncio.wait_for(AsyncClient.connect(str(fake_daemon.path)), 15)

    with pytest.raises(DaemonUnavailableError, match=f"runs as uid {OTHER}"):
        asyncio.run(connect())
    assert fake_daemon.received() == 0


def test_connector_link_treats_a_daemon_of_another_uid_as_none(fake_daemon: FakeDaemon,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Old code: the link's client sent its hello to the fake."""
    link = DaemonLink(str(fake_daemon.path), name="test-link", namespace="default")
    with caplog.at_level(logging.WARNING, logger="connectors.link"):
        assert link.client() is None
    assert fake_daemon.received() == 0
    assert any(f"runs as uid {OTHER}" in r.getMessage() for r in caplog.records)


def test_an_expected_daemon_uid_is_talked_to(fake_daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """`daemon_uid=` (or TIERD_DAEMON_UID) admits a daemon run as a service user: the hello goes
    out (the fake then hangs up, so the connect itself fails afterwards)."""
    with pytest.raises(DaemonUnavailableError):
        Client.connect(str(fake_daemon.path), timeout=5, daemon_uid=OTHER)
    assert fake_daemon.received() > 0
    monkeypatch.setenv("TIERD_DAEMON_UID", str(OTHER))
    with pytest.raises(DaemonUnavailableError):
        Client.connect(str(fake_daemon.path), timeout=5)
    assert fake_daemon.received() > 0


def test_a_bad_expected_daemon_uid_is_a_clear_error() -> None:
    assert expected_daemon_uid(None, env={}) is None
    assert expected_daemon_uid("root", env={}) == 0
    assert expected_daemon_uid(None, env={"TIERD_DAEMON_UID": " 1001 "}) == 1001
    with pytest.raises(ConfigError, match="TIERD_DAEMON_UID='no-such-user-here': no such user"):
        expected_daemon_uid(None, env={"TIERD_DAEMON_UID": "no-such-user-here"})
    with pytest.raises(ConfigError, match="daemon_uid=-1"):
        expected_daemon_uid(-1)


# ------------------------------------------------------------------ the NVMe start-up scan


def test_nvme_scan_at_start_removes_only_tierds_own_temp_files(daemon_factory: DaemonFactory,
                                                               tmp_path: Path) -> None:
    """Old code removed every regular `*.tmp` in the root, and every `*.tmp` in a shard (a
    symlink too; a directory made unlink() raise and the start fail), whoever owned it."""
    nvme = tmp_path / "nvme"
    shard = nvme / "ab"
    shard.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    key = bytes.fromhex("ab" + "11" * 15)
    ours = [shard / write_temp_name(key, b"\x01\x02\x03\x04"), nvme / probe_temp_name(1234, b"\xca\xfe\xca\xfe")]
    foreign = {
        nvme / "notes.txt": "notes",
        nvme / "x.tmp": "x",
        nvme / ".probe-1-cafe.tmp": "a near miss",  # tierd's nonce is 8 hex digits
        shard / "x.tmp": "x",
        shard / "notes.chunk": "junk",
        shard / write_temp_name(bytes.fromhex("cd" + "11" * 15), b"abcd"): "temp name of another shard",
        shard / write_temp_name(key, b"\x05\x06\x07\x08"): "a temp file of another uid",
    }
    for path in ours:
        path.write_bytes(b"interrupted")
    for path, text in foreign.items():
        path.write_text(text)
    os.chown(shard / write_temp_name(key, b"\x05\x06\x07\x08"), OTHER, OTHER)
    links = [shard / write_temp_name(key, b"\x09\x0a\x0b\x0c"), nvme / probe_temp_name(99, b"\x00\x00\x00\x01")]
    for link in links:
        link.symlink_to(outside)
    a_directory = shard / write_temp_name(key, b"\x0d\x0e\x0f\x10")
    a_directory.mkdir()

    d = daemon_factory(nvme_dir=nvme)
    assert d.stop() == 0

    assert not any(os.path.lexists(p) for p in ours)
    assert {p: p.read_text() for p in foreign} == foreign
    assert all(p.is_symlink() for p in links) and outside.read_text() == "keep me"
    assert a_directory.is_dir()
