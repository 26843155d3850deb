"""The namespace a connection is bound to, and what that lets it see.

A connection is bound by the daemon (the peer's uid is mapped to a namespace in the config) or
by the client itself (`hello` with a namespace). Binding only narrows: an unbound connection
may bind once; a bound one may repeat its namespace but never change it. `tierd.rpc.dispatch`
asks `visible()` for every chunk a request names, so a bound client cannot read, list, inspect,
pin or evict another namespace's chunks, and can only put into its own.

Chunks found in the shared object tier by a lookup have no namespace yet (""): their object's
header is read only when they are loaded. They count as visible to a lookup or an acquire (so
a bound engine still reuses prefixes other nodes uploaded); the acquire then checks the
namespace the read established and hands back nothing of another namespace.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tierd.errors import InvalidArgumentError, PermissionDeniedError

#: The namespace of a chunk whose object header has not been read yet.
UNKNOWN = ""


@dataclass(slots=True)
class NamespaceScope:
    """One connection's binding. `namespace` None: every namespace (an unbound connection)."""

    namespace: str | None = None

    def bind(self, namespace: str) -> None:
        if not isinstance(namespace, str) or not namespace or len(namespace) > 255:
            raise InvalidArgumentError(f"namespace {namespace!r}: use a non-empty string of at most 255 characters")
        if self.namespace is not None and namespace != self.namespace:
            raise PermissionDeniedError(
                f"namespace {namespace!r}: this connection is bound to namespace {self.namespace!r} "
                f"and a binding cannot be changed; open another connection for another namespace"
            )
        self.namespace = namespace

    def visible(self, chunk: Any, *, unknown_ok: bool = False) -> bool:
        """May this connection see `chunk` (an index entry, or None for an absent key)?"""
        if chunk is None:
            return False
        if self.namespace is None:
            return True
        return chunk.namespace == self.namespace or (unknown_ok and chunk.namespace == UNKNOWN)

    def check_namespace(self, namespace: str | None, op: str) -> str | None:
        """The namespace a request may name: its own (or none, meaning its own when bound)."""
        if self.namespace is None or namespace is None or namespace == self.namespace:
            return namespace if self.namespace is None else self.namespace
        raise PermissionDeniedError(
            f"{op}: namespace {namespace!r} is not this connection's; it is bound to namespace {self.namespace!r}"
        )
