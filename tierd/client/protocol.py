"""The client's side of the protocol, without I/O: where the daemon listens, the arguments of
the requests both clients send, and what their replies mean.

`Client` and `AsyncClient` differ only in how a request travels (a blocking socket, or asyncio
streams); what they send and how they read the answer is written once, here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from tierd.layout import Layout


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Answer to a lookup: `prefix` leading chunks are present; `codes` has one byte per key,
    the index into `tier_names` of the fastest tier holding it, or 255 if it is absent."""

    prefix: int
    codes: bytes
    tier_names: Sequence[str]
    plan: dict[str, Any] | None = None

    @property
    def tiers(self) -> list[str | None]:
        """The fastest tier holding each key, None where absent."""
        names = self.tier_names
        return [names[c] if c < len(names) else None for c in self.codes]

    @classmethod
    def from_reply(cls, reply: dict[str, Any], info: dict[str, Any]) -> "LookupResult":
        """From a lookup's result and the connection's `hello` answer (which names the tiers)."""
        return cls(reply["prefix"], reply["codes"], info["tiers"], reply.get("plan"))


def default_socket() -> str:
    """The daemon's socket: $TIERD_SOCKET, else the config's default path."""
    from tierd.config import default_socket_path

    return os.environ.get("TIERD_SOCKET") or default_socket_path()


def hello_args(name: str, namespace: str | None) -> dict[str, Any]:
    """The first request of a connection: who the client is, and the namespace to bind to."""
    return {"client": name or f"pid{os.getpid()}", **({"namespace": namespace} if namespace is not None else {})}


def lookup_args(keys: Sequence[bytes], plan: dict[str, Any] | None) -> dict[str, Any]:
    return {"keys": list(keys), **({"plan": plan} if plan is not None else {})}


def reserve_args(layout: Layout, keys: Sequence[bytes], namespace: str | None, bound: str | None,
                 first_position: int, tokens: Sequence[Sequence[int]] | None = None,
                 parent: bytes | None = None) -> dict[str, Any]:
    """A put's reservation. `namespace` defaults to the connection's `bound` one, else "default".
    `tokens` (each key's token ids) and `parent` (the key before keys[0] in its prompt) go into
    the daemon's KV events, for routers; left out when not given."""
    if namespace is None:
        namespace = bound or "default"
    args: dict[str, Any] = {"layout_id": layout.layout_id, "namespace": namespace, "keys": list(keys),
                            "nbytes": layout.chunk_bytes, "first_position": first_position}
    if tokens is not None:
        args["tokens"] = [list(t) for t in tokens]
    if parent is not None:
        args["parent"] = parent
    return args


def acquire_args(layout: Layout, keys: Sequence[bytes], prefix_only: bool) -> dict[str, Any]:
    return {"layout_id": layout.layout_id, "keys": list(keys), "prefix_only": prefix_only}
