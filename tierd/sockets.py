"""The daemon's socket path, held so that no other user can turn it against tierd.

A Unix socket path is a name in a directory, and whatever is at that name when the daemon starts
or stops may not be tierd's: a user's file given by mistake as `--socket`, another user's socket,
a symlink planted to make the daemon delete something. So:

- `claim_socket_path` removes only what it can prove is a stale socket of this daemon's own
  user: a socket (`lstat`, never following a link), owned by our uid, whose connect() is refused
  (ECONNREFUSED: nobody listens). Anything else stops the start with a `ConfigError` that names
  the path and what is there.
- `BoundSocket` binds the path itself (bind() creates the name or fails: it never replaces what
  is there, unlike asyncio's and uvloop's servers, which remove any socket at the path first),
  with the configured mode from the start, and records the inode it created; `remove` at
  shutdown unlinks the path only while it is still that inode.
- `ensure_private_dir`: the default path's directory when `$XDG_RUNTIME_DIR` is not usable,
  `/tmp/tierd-<uid>` (`PRIVATE_DIR_PREFIX`), is created 0700 and verified on every start: ours,
  a real directory (not a symlink), not writable by group or others. One that another user made
  first (to catch the socket, or clients' requests) is refused, never used.

Clients check the other side of the same boundary: `tierd.client.peer` verifies the daemon's uid
before sending a byte.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from tierd.errors import ConfigError

log = logging.getLogger(__name__)

#: The fallback socket directory is `/tmp/<prefix><uid>`; a socket's parent named so for the
#: daemon's own uid is held to `ensure_private_dir`'s rules.
PRIVATE_DIR_PREFIX = "tierd-"


def private_dir_name(uid: int | None = None) -> str:
    """`tierd-<uid>`: the name of a user's private socket directory."""
    return f"{PRIVATE_DIR_PREFIX}{os.getuid() if uid is None else uid}"


def describe(st: os.stat_result, path: str | Path) -> str:
    """What an lstat result is, in words, for messages: "a regular file (12 bytes, uid 0)"."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        kind = f"a symbolic link to {target!r}"
    elif stat.S_ISREG(mode):
        kind = f"a regular file ({st.st_size} bytes"
        return f"{kind}, owner uid {st.st_uid}, mode {stat.S_IMODE(mode):04o})"
    else:
        kind = {stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket", stat.S_IFIFO: "a FIFO",
                stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(mode),
                                                                                     "a special file")
    return f"{kind} (owner uid {st.st_uid}, mode {stat.S_IMODE(mode):04o})"


def ensure_private_dir(directory: Path, mode: int = 0o700) -> None:
    """Create `directory` with `mode` if it is missing; refuse it unless it is a directory (not a
    symlink) owned by this process's uid that neither group nor others can write.

    A directory that already exists keeps its mode (an operator may have opened it to 0711 so
    other users can reach the socket); only one this call created gets `mode` set exactly."""
    created = False
    try:
        os.mkdir(directory, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"socket directory {str(directory)!r}: cannot create it ({exc.strerror})") from None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            what = describe(os.lstat(directory), directory)
            raise ConfigError(f"socket directory {str(directory)!r}: {what} is there, not a directory of "
                              f"uid {os.geteuid()}; refusing to use it (another user may have put it there): "
                              "remove it or choose another --socket") from None
        raise ConfigError(f"socket directory {str(directory)!r}: cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ConfigError(f"socket directory {str(directory)!r} belongs to uid {st.st_uid}, not to uid "
                              f"{os.geteuid()}; refusing to use it (another user may have made it to catch the "
                              "socket): remove it or choose another --socket")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise ConfigError(f"socket directory {str(directory)!r} has mode {stat.S_IMODE(st.st_mode):04o}: "
                              "group or others can write it, so they could replace the socket; refusing to "
                              f"use it: `chmod 700 {directory}` or choose another --socket")
        if created and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)  # mkdir's mode went through the umask
    finally:
        os.close(fd)


def claim_socket_path(path: Path) -> None:
    """Make `path` free for bind(): nothing there, or a stale socket of ours, which is removed.

    Raises ConfigError, removing nothing, for anything else: a live daemon, a file that is not a
    socket, a socket of another uid, or a socket whose state connect() cannot tell."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"socket {str(path)!r}: cannot examine it ({exc.strerror})") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket {str(path)!r}: {describe(st, path)} is there, not a socket; tierd only "
                          "removes a stale socket of its own user: remove it yourself or choose another --socket")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"socket {str(path)!r}: a socket of uid {st.st_uid} is there, not of uid {os.geteuid()}; "
                          "tierd only removes a stale socket of its own user: remove it yourself or choose "
                          "another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a listener with a full backlog answers EAGAIN at once, not later
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            if exc.errno == errno.EAGAIN:
                raise ConfigError(f"socket {str(path)!r}: another tierd daemon is already serving there "
                                  "(its backlog is full)") from None
            raise ConfigError(f"socket {str(path)!r}: cannot tell whether the socket there is in use "
                              f"(connect: {exc.strerror}); not removing it") from None
    else:
        raise ConfigError(f"socket {str(path)!r}: another tierd daemon is already serving there")
    finally:
        probe.close()
    _unlink_if_same(path, SocketIdentity.of(st), "stale socket (nobody listens)")


@dataclass(frozen=True, slots=True)
class SocketIdentity:
    """Which filesystem object a path named when it was looked at."""

    dev: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "SocketIdentity":
        return cls(st.st_dev, st.st_ino)


def _unlink_if_same(path: Path, identity: SocketIdentity, why: str) -> bool:
    """Unlink `path` if it is still the socket `identity` names; False (nothing removed) otherwise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or SocketIdentity.of(st) != identity:
        return False
    log.info("removing %s: %s", path, why)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class BoundSocket:
    """The daemon's listening socket: claimed, bound with its final mode, and removed at the end
    only if the path still names it.

    Bound at once but listened on later (`start_unix_server(sock=...)` calls listen()): until
    the daemon is ready a client's connect() is refused, as if nothing were there, while the
    path is already held."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        parent = path.parent
        if parent.name == private_dir_name(os.geteuid()):
            # Others need search permission on the directory to reach a socket opened to them.
            reach = (0o010 if mode & 0o060 else 0) | (0o001 if mode & 0o006 else 0)
            ensure_private_dir(parent, 0o700 | reach)
        elif not parent.is_dir():
            raise ConfigError(f"socket {str(path)!r}: directory {str(parent)!r} does not exist")
        claim_socket_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~mode)  # the socket is created with `mode`: no chmod window
        try:
            self.sock.bind(str(path))
            st = os.lstat(path)
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"socket {str(path)!r}: something was created there while tierd was "
                                  "starting; not removing it") from None
            raise ConfigError(f"socket {str(path)!r}: cannot bind it ({exc.strerror})") from None
        finally:
            os.umask(old_umask)
        self.identity = SocketIdentity.of(st)

    def remove(self) -> None:
        """Close the socket and unlink the path, unless something else has replaced it meanwhile."""
        self.sock.close()
        if not _unlink_if_same(self.path, self.identity, "daemon stopped"):
            if self.path.exists() or self.path.is_symlink():
                log.warning("not removing %s: it is no longer the socket this daemon bound", self.path)
