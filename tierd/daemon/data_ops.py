"""Request handlers of the data path: register a layout, look keys up, put (reserve, commit,
abort), get (acquire, release), and the operator's pin, unpin and evict.

Each handler checks what its connection's namespace binding (`tierd.daemon.scope`) lets it
touch, then calls the store: keys of other namespaces are misses to lookup and acquire and are
left out of pin, unpin and evict; reserve into another namespace is refused. The live canary's
variant of the put (`verify`: scratch slots for stored keys, compared at commit) gets scratch
slots only for the connection's own chunks, so it tells a bound client nothing about others'.
"""
from __future__ import annotations

from typing import Any, Callable

from tierd.daemon.scope import Bindings
from tierd.errors import InvalidArgumentError
from tierd.layout import Layout
from tierd.store import ABSENT, Session, TieredStore
from tierd.store.chunk import check_keys

#: The cost model's plan for a lookup: (the plan request, the codes of the present prefix) -> reply.
Planner = Callable[[dict[str, Any], bytes], dict[str, Any]]


class DataOps:
    """The data-path handlers of one store, bound to the connections' namespace bindings."""

    def __init__(self, store: TieredStore, bindings: Bindings, plan: Planner) -> None:
        self.store = store
        self.bindings = bindings
        self.plan = plan

    def handlers(self) -> dict[str, Callable[[Session, dict[str, Any]], Any]]:
        store, own = self.store, self.bindings.own_keys
        return {
            "register_layout": self.register_layout,
            "lookup": self.lookup,
            "reserve": self.reserve,
            "commit": self.commit,
            "abort": self.abort,
            "acquire": self.acquire,
            "release": lambda s, a: {"released": store.release(s, a["lease"])},
            "evict": self.evict,
            "pin": lambda s, a: {"pinned": store.pin(own(s, a["keys"]), True)},
            "unpin": lambda s, a: {"unpinned": store.pin(own(s, a["keys"]), False)},
        }

    def register_layout(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        layout = Layout.from_dict(args["layout"])
        return {"layout_id": self.store.register_layout(layout), "chunk_bytes": layout.chunk_bytes}

    async def lookup(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        keys = self.bindings.store_keys(session, args["keys"])
        prefix, codes = await self.store.lookup_async(keys)
        scope = self.bindings.bound(session)
        if scope is not None:  # another namespace's chunks are misses to this connection
            index = self.store.index
            codes = bytes(code if scope.visible(index.get(k), unknown_ok=True) else ABSENT
                          for k, code in zip(keys, codes))
            prefix = codes.find(ABSENT)
            prefix = len(codes) if prefix < 0 else prefix
        reply: dict[str, Any] = {"prefix": prefix, "codes": codes}
        if "plan" in args:
            reply["plan"] = self.plan(args["plan"], codes[:prefix])
        return reply

    async def reserve(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        scope = self.bindings.bound(session)
        if scope is not None:
            scope.check_namespace(args["namespace"], "reserve")
        keys = self.bindings.store_keys(session, args["keys"])
        if args.get("verify"):
            if "tokens" in args or "parent" in args:
                raise InvalidArgumentError("reserve: tokens and parent describe a put; a verify reserve stores nothing")
            check_keys(keys)
            mask = None if scope is None else [scope.visible(self.store.index.get(k)) for k in keys]
            return {"slots": await self.store.verify_reserve(session, args["layout_id"], keys, args["nbytes"], mask)}
        self.bindings.check_writable(session, args["namespace"], "reserve")
        parent = args.get("parent")
        if parent is not None:  # the store's key, as keys[0]'s (a tenant's own keys)
            parent = self.bindings.store_keys(session, [parent])[0]
        slots = await self.store.reserve(session, args["layout_id"], args["namespace"], keys, args["nbytes"],
                                         first_position=args.get("first_position", 0), tokens=args.get("tokens"),
                                         parent=parent)
        return {"slots": slots}

    async def commit(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        keys = self.bindings.store_keys(session, args["keys"])
        if args.get("verify"):
            return await self.store.verify_commit(session, keys, args.get("tolerance", 0.0))
        if "tolerance" in args:
            raise InvalidArgumentError("commit: tolerance applies to a verify commit (verify=true) only")
        return {"committed": self.store.commit(session, keys)}

    def abort(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        abort = self.store.verify_abort if args.get("verify") else self.store.abort
        return {"aborted": abort(session, self.bindings.store_keys(session, args["keys"]))}

    async def acquire(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        layout_id, prefix_only = args["layout_id"], args.get("prefix_only", True)
        keys = self.bindings.store_keys(session, args["keys"])
        scope = self.bindings.bound(session)
        if scope is None:
            lease, slots = await self.store.acquire(session, layout_id, keys, prefix_only=prefix_only)
            return {"lease": lease, "slots": slots}
        check_keys(keys)
        index = self.store.index
        unknown_ok = True  # first pass: chunks found in the object tier get their namespace on read
        for _ in range(2):
            mask = [scope.visible(index.get(k), unknown_ok=unknown_ok) for k in keys]
            lease, slots = await self._acquire_masked(session, layout_id, keys, mask, prefix_only)
            if all(s is None or scope.visible(index.get(k)) for k, s in zip(keys, slots)):
                return {"lease": lease, "slots": slots}
            # a chunk read just now belongs to another namespace: hand back none of it
            self.store.release(session, lease)
            unknown_ok = False
        lease, slots = await self._acquire_masked(session, layout_id, keys, [False] * len(keys), prefix_only)
        return {"lease": lease, "slots": slots}

    async def _acquire_masked(self, session: Session, layout_id: str, keys: list[bytes], mask: list[bool],
                              prefix_only: bool) -> tuple[int, list[int | None]]:
        """Acquire only the keys `mask` lets through; the others are misses (None)."""
        if prefix_only:
            n = mask.index(False) if False in mask else len(mask)
            lease, slots = await self.store.acquire(session, layout_id, keys[:n], prefix_only=True)
            return lease, slots + [None] * (len(keys) - n)
        lease, got = await self.store.acquire(session, layout_id, [k for k, m in zip(keys, mask) if m],
                                              prefix_only=False)
        picked = iter(got)
        return lease, [next(picked) if m else None for m in mask]

    async def evict(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        keys, namespace, everything = args.get("keys"), args.get("namespace"), args.get("all", False)
        scope = self.bindings.bound(session)
        if scope is not None:
            scope.check_namespace(namespace, "evict")
            if keys is not None:
                keys, namespace, everything = self.bindings.own_keys(session, keys), None, False
            elif namespace is not None or everything:  # "all" of a bound connection is its namespace
                namespace, everything = scope.namespace, False
        return await self.store.evict(keys=keys, namespace=namespace, tier=args.get("tier"), everything=everything)
