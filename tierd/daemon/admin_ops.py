"""Request handlers of the connection and the operator's reports: `hello`, `ping`, `stat`,
`layouts`, `ls`, `inspect`, `quota`, the live canary's `quarantine` and the hit-rate curve (`mrc`).

A connection bound to a namespace (`tierd.daemon.scope`) lists and inspects only its own
namespace's chunks and sees only its own quota; stat, layouts, the canary's counts and the
hit-rate curve are daemon-wide figures and stay open. Only an unbound connection (the operator)
may clear a quarantine.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

import tierd
from tierd.daemon.scope import Bindings
from tierd.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError, shown
from tierd.store import Session, TieredStore
from tierd.store.chunk import check_keys

if TYPE_CHECKING:
    from tierd.mrc.observer import AccessObserver

#: Largest capacity (in chunks) an `mrc` grid may ask about: beyond 2**53 float64 arithmetic is
#: inexact, and far beyond any cache (2**53 chunks of 1 MiB are 8 ZiB).
MAX_GRID_CHUNKS = 2**53


class AdminOps:
    """The connection and report handlers of one store. `extra_info()` adds the daemon's own
    figures to `stat` (None in embedded mode); `denied()` counts requests refused for reaching
    outside their namespace."""

    def __init__(self, store: TieredStore, bindings: Bindings, *, observer: "AccessObserver | None",
                 extra_info: Callable[[], Mapping[str, Any]] | None, denied: Callable[[], int]) -> None:
        self.store = store
        self.bindings = bindings
        self.observer = observer
        self.extra_info = extra_info
        self.denied = denied

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        store = self.store
        return {
            "hello": self.hello,
            "map_arena": self.map_arena,
            "ping": lambda s, a: {"pong": True},
            "stat": self.stat,
            "layouts": lambda s, a: {"layouts": {i: l.to_dict() for i, l in store.layouts.items()}},
            "ls": self.ls,
            "inspect": self.inspect,
            "quota": self.quota,
            "quarantine": self.quarantine,
            "mrc": self.mrc,
        }

    def hello(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("client"):
            session.name = args["client"]
        if args.get("namespace") is not None:
            self.bindings.bind(session, args["namespace"])
        prefault = getattr(self.store.arena, "prefault", None)
        return {
            "namespace": self.bindings.namespace_of(session),
            "arena_populated": prefault is None or prefault.complete,
            "version": tierd.__version__,
            "pid": os.getpid(),
            "session": session.id,
            "arena_bytes": self.store.arena.size,
            "arena_regions": [r.describe() for r in self._regions(session)],
            "tiers": [t["name"] for t in self.store.stat()["tiers"]],
        }

    def _regions(self, session: Session) -> list[Any]:
        """The arena regions a connection may map: every region for an unbound connection (the
        operator's, or an engine's that sees every namespace), else its namespace's region only."""
        namespace = self.bindings.namespace_of(session)
        arena = self.store.arena
        return list(arena.regions) if namespace is None else [arena.region_for(namespace)]

    def map_arena(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """The regions this connection may map, and their descriptors (`fds`: this process's
        numbers; the daemon sends the files themselves with the reply, `tierd.rpc.fds`)."""
        regions = self._regions(session)
        return {"regions": [r.describe() for r in regions], "fds": [r.fd for r in regions]}

    def stat(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        stat = self.store.stat()
        stat["namespace"] = self.bindings.namespace_of(session)  # this connection's binding
        stat["namespace_denied"] = self.denied()
        if self.extra_info is not None:
            stat.update(self.extra_info())
        return stat

    def ls(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.bindings.bound(session)
        if scope is not None:
            args = {**args, "namespace": scope.check_namespace(args.get("namespace"), "ls")}
        return {"chunks": self.store.ls(**args)}

    async def inspect(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        key = args["key"]
        scope = self.bindings.bound(session)
        if scope is None:
            return await self.store.inspect(key)
        check_keys([key])
        hidden = NotFoundError(f"key {key.hex()} is not stored")  # the store's words: nothing to tell apart
        (own,) = self.bindings.store_keys(session, [key])
        if own in self.store.index or not scope.visible(self.store.index.get(key)):
            key = own  # a key the tenant computed; else a store key `ls` showed it, of its own chunk
        if not scope.visible(self.store.index.get(key), unknown_ok=True) and key in self.store.index:
            raise hidden
        result = await self.store.inspect(key)
        if result.get("namespace") != scope.namespace:
            raise hidden
        return result

    def quota(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Show namespaces' quotas and use per local tier; set one (`bytes`) or remove it (`clear`).
        A bound connection sees only its own namespace and sets nothing. A lowered quota applies
        from the namespace's next put or promotion on."""
        bound = self.bindings.namespace_of(session)
        namespace, limit, clear = args.get("namespace"), args.get("bytes"), bool(args.get("clear"))
        if limit is not None or clear:
            if bound is not None:
                raise PermissionDeniedError(f"this connection is bound to namespace {bound!r}: it cannot set quotas")
            if namespace is None:
                raise InvalidArgumentError("quota: name the namespace whose quota to set or clear")
            if limit is not None and clear:
                raise InvalidArgumentError("quota: give bytes or clear, not both")
            self.store.quotas.set(namespace, None if clear else limit)
        if bound is not None:
            if namespace not in (None, bound):
                raise PermissionDeniedError(f"this connection is bound to namespace {bound!r}: it cannot see the "
                                            f"quota of {namespace!r}")
            namespace = bound
        return {"quotas": self.store.quotas.report(namespace), "refused": self.store.quotas.refused}

    def quarantine(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """The canary's counts and the quarantined tiers; with `clear`, lift the quarantine of
        `tier` (or of every tier) first."""
        tier, clear = args.get("tier"), bool(args.get("clear"))
        cleared: list[str] = []
        if tier is not None and not clear:
            raise InvalidArgumentError("quarantine: a tier is named only to clear its quarantine (clear=true)")
        if clear:
            bound = self.bindings.namespace_of(session)
            if bound is not None:
                raise PermissionDeniedError(f"this connection is bound to namespace {bound!r}: it cannot clear a "
                                            f"quarantine")
            cleared = self.store.quarantine.clear(None if tier is None else [tier])
        return {**self.store.verifier.report(), "cleared": cleared}

    def mrc(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        if self.observer is None:
            raise InvalidArgumentError("this store keeps no hit-rate curve (embedded mode); ask a running daemon")
        grid = args.get("grid")
        if grid is not None and (not grid or min(grid) <= 0 or max(grid) > MAX_GRID_CHUNKS):
            raise InvalidArgumentError(f"grid {shown(grid)}: use positive capacities in chunks, at most "
                                       f"{MAX_GRID_CHUNKS}")
        gain = args.get("gain_per_gib", 0.001)
        if not gain > 0:
            raise InvalidArgumentError(f"gain_per_gib {shown(gain)}: use a positive hit-ratio gain per GiB, e.g. 0.001")
        return self.observer.report(grid, float(gain))
