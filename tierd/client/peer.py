"""Whom a client has connected to: the daemon's uid, checked before the first byte is sent.

A socket path proves nothing about who listens there: another user may have bound it first (a
name in a shared directory, a stale path in a config), and a client that sends its `hello` and
then its keys and chunk bytes to that process has leaked them, and may map memory it hands back.
Right after connect() the client asks the kernel for the listener's credentials (SO_PEERCRED,
recorded when the daemon called listen(); not forgeable) and goes on only if the daemon runs as

- the client's own user (the default set-up), or
- root (a system daemon; root could read the client's memory anyway), or
- the uid the caller expects: `daemon_uid=` on `Client.connect`, `AsyncClient.connect` and
  `DaemonLink`, else `$TIERD_DAEMON_UID` (a number or a user name), for a daemon run as a
  service user.

Anything else is `UntrustedDaemonError` (a `DaemonUnavailableError`: to a connector it is a miss,
as when no daemon runs), and the connection is closed with nothing written to it.
"""
from __future__ import annotations

import os
import pwd
import socket
import struct
from typing import Any

from tierd.errors import ConfigError, DaemonUnavailableError

#: Environment variable naming the uid a daemon run as a service user has.
DAEMON_UID_ENV = "TIERD_DAEMON_UID"

_UCRED = struct.Struct("3i")  # pid, uid, gid


class UntrustedDaemonError(DaemonUnavailableError):
    """The process listening at the socket runs as a user this client does not trust."""


def expected_daemon_uid(daemon_uid: int | str | None = None, *, env: dict[str, str] | None = None) -> int | None:
    """The extra uid a daemon may run as: `daemon_uid` if given, else `$TIERD_DAEMON_UID`, else
    None. A user name is looked up; a value that is neither a uid nor a user is a ConfigError."""
    value: int | str | None = daemon_uid
    where = "daemon_uid"
    if value is None:
        value = (os.environ if env is None else env).get(DAEMON_UID_ENV) or None
        where = DAEMON_UID_ENV
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        uid = value
    elif isinstance(value, str) and value.strip().isdigit():
        uid = int(value.strip())
    elif isinstance(value, str) and value.strip():
        try:
            uid = pwd.getpwnam(value.strip()).pw_uid
        except KeyError:
            raise ConfigError(f"{where}={value!r}: no such user; give a uid or a user name") from None
    else:
        raise ConfigError(f"{where}={value!r}: give a uid or a user name")
    if not 0 <= uid < 2**32:
        raise ConfigError(f"{where}={value!r}: a uid is between 0 and 4294967295")
    return uid


def daemon_peer_uid(sock: Any) -> int:
    """The uid of the process that listens at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)[1]


def check_daemon_peer(sock: Any, path: str, expected: int | None) -> None:
    """Raise UntrustedDaemonError unless the daemon at `sock` runs as this user, root or
    `expected` (see the module docstring). Call it before writing anything to `sock`."""
    try:
        uid = daemon_peer_uid(sock)
    except (OSError, AttributeError) as exc:  # fail closed: no credentials, no trust
        raise UntrustedDaemonError(f"cannot tell which user runs the daemon at {path} ({exc}); "
                                   "not talking to it") from None
    trusted = {os.getuid(), os.geteuid(), 0}
    if expected is not None:
        trusted.add(expected)
    if uid in trusted:
        return
    raise UntrustedDaemonError(
        f"the process listening at {path} runs as uid {uid} ({_user(uid)}), not as this user "
        f"(uid {os.getuid()}), root{f' or uid {expected}' if expected is not None else ''}; refusing to talk "
        f"to it. If a daemon run as that user is intended, set {DAEMON_UID_ENV}={uid} (or daemon_uid={uid})")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"
