"""The namespace a connection is bound to, and what that lets it see.

A connection is bound by the daemon (the peer's uid is mapped to a namespace in the config) or
by the client itself (`hello` with a namespace). Binding only narrows: an unbound connection
may bind once; a bound one may repeat its namespace but never change it. The request handlers
(`tierd.daemon.data_ops`, `admin_ops`, `plan_ops`) ask `visible()` for every chunk a request
names, so a bound client cannot read, list, inspect, pin or evict another namespace's chunks,
and can only put into its own. `Bindings` keeps each connection's scope.

Chunks found in the shared object tier by a lookup have no namespace yet (""): their object's
header is read only when they are loaded. They count as visible to a lookup or an acquire (so
a bound engine still reuses prefixes other nodes uploaded); the acquire then checks the
namespace the read established and hands back nothing of another namespace.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from tierd.errors import PermissionDeniedError
from tierd.keys import check_namespace, tenant_keys
from tierd.store.chunk import check_keys

if TYPE_CHECKING:
    from tierd.store import Session

#: The namespace of a chunk whose object header has not been read yet.
UNKNOWN = ""


@dataclass(slots=True)
class NamespaceScope:
    """One connection's binding. `namespace` None: every namespace (an unbound connection)."""

    namespace: str | None = None

    def bind(self, namespace: str) -> None:
        check_namespace(namespace)  # the one limit (255 UTF-8 bytes) the store and every tier keep
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


class Bindings:
    """The namespace binding of every open connection, by session id (a store `Session` has no
    room for it). The daemon binds a connection from its peer's uid before the first request;
    `hello` may bind it too; `forget` drops it when the connection closes.

    Tenants (namespaces bound to a user, `--namespaces`) have keys of their own: every key a
    connection bound to a tenant sends is mapped to the tenant's store key (`store_keys`,
    `tierd.keys.tenant_keys`) before the store sees it, so the index is keyed by (namespace,
    key): no key a tenant sends can name another namespace's chunk, hit or "already stored"."""

    def __init__(self, index: Mapping[bytes, Any], tenants: frozenset[str] = frozenset()) -> None:
        self.index = index  # the store's chunk index: each chunk's namespace
        self.tenants = tenants
        self._scopes: dict[int, NamespaceScope] = {}

    def bind(self, session: "Session", namespace: str) -> None:
        self._scopes.setdefault(session.id, NamespaceScope()).bind(namespace)

    def forget(self, session: "Session") -> None:
        self._scopes.pop(session.id, None)

    def namespace_of(self, session: "Session") -> str | None:
        scope = self._scopes.get(session.id)
        return scope.namespace if scope is not None else None

    def bound(self, session: "Session") -> NamespaceScope | None:
        """The connection's scope if it is bound to a namespace, else None (it sees everything)."""
        scope = self._scopes.get(session.id)
        return scope if scope is not None and scope.namespace is not None else None

    def store_keys(self, session: "Session", keys: list[bytes]) -> list[bytes]:
        """The store's keys for the keys a request names: a tenant's own (`tierd.keys.tenant_keys`)
        on a connection bound to a tenant, else the keys as sent."""
        namespace = self.namespace_of(session)
        if namespace is None or namespace not in self.tenants:
            return keys
        check_keys(keys)  # a bad key is still an error, not a key hashed into a valid one
        return tenant_keys(namespace, keys)

    def check_writable(self, session: "Session", namespace: str, op: str) -> None:
        """A tenant's chunks are written only under its own keys, so only by connections bound to
        it: an unbound connection's keys would be raw keys no tenant connection could name."""
        if namespace in self.tenants and self.namespace_of(session) != namespace:
            raise PermissionDeniedError(
                f"{op}: namespace {namespace!r} is a tenant's (bound to a user with --namespaces): its chunks "
                f"are stored under keys of its own; connect with namespace={namespace!r} (hello) to write them")

    def own_keys(self, session: "Session", keys: list[bytes]) -> list[bytes]:
        """`keys` (as the store's keys) less those of chunks outside the connection's namespace
        (none left out if unbound)."""
        keys = self.store_keys(session, keys)
        scope = self.bound(session)
        if scope is None:
            return keys
        check_keys(keys)  # a bad key is still an error for a bound connection, not a silent miss
        return [k for k in keys if scope.visible(self.index.get(k))]

