"""Who is at the other end of a connection, and whether this daemon serves them.

The socket's mode (0600 by default) is the first gate; this is the second, for when an operator
opens the mode up (0660 for a group) or a directory's permissions are looser than meant. The
kernel records the peer's pid, uid and gid when it connects (SO_PEERCRED); a client cannot
forge them. Policy (`allow_uids`, `namespaces` in the config):

- only the listed users may connect; the default list is "self", the daemon's own uid. Root is
  not let in implicitly (it could read the arena anyway, but an explicit list is the one rule
  an auditor has to read): list it (`self,root`) if admins run the CLI with sudo;
- a user bound to a namespace gets connections that see and write only that namespace's chunks
  (`tierd.daemon.scope` and the request handlers enforce it); other admitted users see every namespace.
"""
from __future__ import annotations

import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process as the kernel saw it when it connected."""

    pid: int
    uid: int
    gid: int

    def describe(self) -> str:
        """"pid 4242, uid 1001 (alice)", for logs and refusals."""
        return f"pid {self.pid}, uid {self.uid} ({user_name(self.uid)})"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


def peer_credentials(sock: Any) -> PeerCredentials | None:
    """The credentials of a connected Unix socket's peer (`sock` may be asyncio's or uvloop's
    transport socket); None where the kernel cannot say (not a Unix socket, not Linux)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if sock is None or opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, _UCRED.size)
    except (OSError, AttributeError):
        return None
    return PeerCredentials(*_UCRED.unpack(raw))


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Which uids may connect, and which of them are bound to one namespace."""

    allowed: frozenset[int]
    bindings: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, allow_uids: str, namespaces: str, *, own_uid: int | None = None) -> "PeerPolicy":
        """From the canonical strings `tierd.config` keeps ("self,1001" and "1001:tenantA")."""
        own = os.getuid() if own_uid is None else own_uid

        def uid(word: str) -> int:
            return own if word == "self" else int(word)

        allowed = frozenset(uid(w) for w in allow_uids.split(",") if w)
        bindings = {uid(u): ns for u, _, ns in (pair.partition(":") for pair in namespaces.split(",") if pair)}
        return cls(allowed, bindings)

    def admits(self, peer: PeerCredentials | None) -> bool:
        """Unknown credentials are refused: the check fails closed."""
        return peer is not None and peer.uid in self.allowed

    def namespace_for(self, peer: PeerCredentials) -> str | None:
        """The namespace the peer's connections are bound to; None: every namespace."""
        return self.bindings.get(peer.uid)

    def refusal(self, peer: PeerCredentials | None) -> str:
        """The message a refused peer gets: who it is, who is admitted, what to change."""
        who = peer.describe() if peer is not None else "a peer whose credentials the kernel did not report"
        admitted = ", ".join(f"{u} ({user_name(u)})" for u in sorted(self.allowed)) or "nobody"
        return (f"{who} may not use this tierd daemon (pid {os.getpid()}, which admits uid {admitted}); "
                f"its operator can add the user to allow_uids (--allow-uids, TIERD_ALLOW_UIDS)")
