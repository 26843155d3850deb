"""Operations of the control plane: validate a request, call the store, shape the reply.

One dispatcher serves both the daemon (requests decoded from socket frames) and embedded mode
(requests handed over in-process), so the two can never disagree. A request is a map
`{"id": int, "op": str, ...args}`; the reply is `{"id", "ok": true, "result"}` or
`{"id", "ok": false, "error": {"code", "message"}}`. Argument types are checked here, values by
the store; either way a bad request changes nothing and the connection keeps working.

A connection may be bound to one namespace (`tierd.rpc.scope`): by the daemon, from the peer's
uid, or by the client's own `hello`. This is where the binding is enforced, op by op, from each
chunk's namespace in the store's index: keys of other namespaces are misses to lookup and
acquire, and are left out of explain, pin, unpin and evict; ls lists only the bound namespace;
inspect says "not stored"; reserve into another namespace is refused. stat, costs, layouts and
the hit-rate curve are daemon-wide figures and stay open.
"""
from __future__ import annotations

import inspect
import os
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

import tierd
from tierd.cost.admission import CostAdmission
from tierd.cost.models import LayoutModels
from tierd.errors import (InternalError, InvalidArgumentError, NotFoundError, PermissionDeniedError, ProtocolError,
                          TierdError, names, shown)
from tierd.keys import KEY_BYTES
from tierd.layout import Layout
from tierd.rpc.scope import NamespaceScope
from tierd.store import ABSENT, Session, TieredStore

if TYPE_CHECKING:
    from tierd.mrc.observer import AccessObserver

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Arg:
    types: tuple[type, ...]
    required: bool = True
    list_of: type | None = None  # element type when `types` is (list,)


_KEYS = Arg((list,), list_of=bytes)
_OPT_KEYS = Arg((list,), required=False, list_of=bytes)
_STR = Arg((str,))
_OPT_STR = Arg((str,), required=False)
_INT = Arg((int,))


class Dispatcher:
    """Maps op names to store calls. `observe(op, seconds, ok)` lets the server record latency."""

    def __init__(self, store: TieredStore, *, extra_info: Callable[[], Mapping[str, Any]] | None = None,
                 observer: "AccessObserver | None" = None) -> None:
        self.store = store
        self.extra_info = extra_info
        self.observer = observer
        #: Each layout's cost model (shape from its engine's plan requests, device declared or
        #: learned from the prefill times its connector reports), and admission judged by them.
        self.models = LayoutModels(lambda: store.costs)
        store.admission = CostAdmission(self.models)
        self.observe: Callable[[str, float, bool], None] | None = None
        #: Namespace bindings of connections, by session id (a session has no room for it).
        self._scopes: dict[int, NamespaceScope] = {}
        #: Requests refused because they reached outside their connection's namespace.
        self.denied = 0
        self._ops: dict[str, tuple[dict[str, Arg], Handler]] = {
            "hello": ({"client": _OPT_STR, "namespace": _OPT_STR}, self._hello),
            "ping": ({}, lambda s, a: {"pong": True}),
            "register_layout": ({"layout": Arg((dict,))}, self._register_layout),
            "lookup": ({"keys": _KEYS, "plan": Arg((dict,), required=False)}, self._lookup),
            "costs": ({"layout_id": _OPT_STR}, self._costs),
            "observe_prefill": ({"start": _INT, "end": _INT, "seconds": Arg((float, int)), "layout_id": _OPT_STR},
                                self._observe_prefill),
            "explain": ({"keys": _KEYS, "prompt_tokens": Arg((int,), required=False)}, self._explain),
            "reserve": (
                {"layout_id": _STR, "namespace": _STR, "keys": _KEYS, "nbytes": _INT,
                 "first_position": Arg((int,), required=False)},
                self._reserve,
            ),
            "commit": ({"keys": _KEYS}, lambda s, a: {"committed": store.commit(s, a["keys"])}),
            "abort": ({"keys": _KEYS}, lambda s, a: {"aborted": store.abort(s, a["keys"])}),
            "acquire": (
                {"layout_id": _STR, "keys": _KEYS, "prefix_only": Arg((bool,), required=False)},
                self._acquire,
            ),
            "release": ({"lease": _INT}, lambda s, a: {"released": store.release(s, a["lease"])}),
            "evict": (
                {"keys": _OPT_KEYS, "namespace": _OPT_STR, "tier": _OPT_STR, "all": Arg((bool,), required=False)},
                self._evict,
            ),
            "pin": ({"keys": _KEYS}, lambda s, a: {"pinned": store.pin(self._own_keys(s, a["keys"]), True)}),
            "unpin": ({"keys": _KEYS}, lambda s, a: {"unpinned": store.pin(self._own_keys(s, a["keys"]), False)}),
            "stat": ({}, self._stat),
            "layouts": ({}, lambda s, a: {"layouts": {i: l.to_dict() for i, l in store.layouts.items()}}),
            "ls": (
                {"tier": _OPT_STR, "namespace": _OPT_STR, "key_prefix": _OPT_STR, "sort": _OPT_STR,
                 "limit": Arg((int,), required=False)},
                self._ls,
            ),
            "inspect": ({"key": Arg((bytes,))}, self._inspect),
            "quota": ({"namespace": _OPT_STR, "bytes": Arg((int,), required=False),
                       "clear": Arg((bool,), required=False)}, self._quota),
            "mrc": ({"grid": Arg((list,), required=False, list_of=int), "gain_per_gib": Arg((float, int), required=False)},
                    self._mrc),
        }

    @property
    def ops(self) -> list[str]:
        return sorted(self._ops)

    async def handle(self, session: Session, request: Any) -> dict[str, Any]:
        """Reply to one request; never raises for a bad request."""
        rid = request.get("id") if isinstance(request, dict) else None
        op = request.get("op") if isinstance(request, dict) else None
        start = time.perf_counter()
        try:
            if not isinstance(request, dict):
                raise ProtocolError(f"a request must be a map with 'id' and 'op', got {type(request).__name__}")
            if not isinstance(rid, int) or isinstance(rid, bool):
                raise ProtocolError(f"request id {shown(rid)}: must be an integer")
            if not isinstance(op, str) or op not in self._ops:
                raise ProtocolError(f"unknown op {shown(op)}: known ops are {', '.join(self.ops)}")
            schema, handler = self._ops[op]
            args = _validate(op, schema, request)
            result = handler(session, args)
            if inspect.isawaitable(result):
                result = await result
            reply = {"id": rid, "ok": True, "result": result}
        except TierdError as exc:
            if isinstance(exc, PermissionDeniedError):
                self.denied += 1
            reply = {"id": rid, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
        if self.observe is not None and isinstance(op, str) and op in self._ops:
            self.observe(op, time.perf_counter() - start, reply["ok"])
        return reply

    # ---------------------------------------------------------------- namespace bindings

    def bind(self, session: Session, namespace: str | None) -> None:
        """Bind a new connection to `namespace` (None: leave it unbound). The daemon calls it
        with the namespace its peer's uid maps to, before the first request."""
        if namespace is not None:
            self._scopes.setdefault(session.id, NamespaceScope()).bind(namespace)

    def forget(self, session: Session) -> None:
        """The connection is gone: drop its binding."""
        self._scopes.pop(session.id, None)

    def namespace_of(self, session: Session) -> str | None:
        scope = self._scopes.get(session.id)
        return scope.namespace if scope is not None else None

    def _bound(self, session: Session) -> NamespaceScope | None:
        """The connection's scope if it is bound to a namespace, else None (it sees everything)."""
        scope = self._scopes.get(session.id)
        return scope if scope is not None and scope.namespace is not None else None

    def _own_keys(self, session: Session, keys: list[bytes]) -> list[bytes]:
        """`keys` less those of chunks outside the connection's namespace (all of them if unbound)."""
        scope = self._bound(session)
        if scope is None:
            return keys
        _check_key_lengths(keys)
        index = self.store.index
        return [k for k in keys if scope.visible(index.get(k))]

    # ---------------------------------------------------------------- handlers

    def _hello(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("client"):
            session.name = args["client"]
        if args.get("namespace") is not None:
            self._scopes.setdefault(session.id, NamespaceScope()).bind(args["namespace"])
        prefault = getattr(self.store.arena, "prefault", None)
        return {
            "namespace": self.namespace_of(session),
            "arena_populated": prefault is None or prefault.complete,
            "version": tierd.__version__,
            "pid": os.getpid(),
            "session": session.id,
            "arena_path": str(self.store.arena.path),
            "arena_bytes": self.store.arena.size,
            "tiers": [t["name"] for t in self.store.stat()["tiers"]],
        }

    def _register_layout(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        layout = Layout.from_dict(args["layout"])
        return {"layout_id": self.store.register_layout(layout), "chunk_bytes": layout.chunk_bytes}

    async def _lookup(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        prefix, codes = await self.store.lookup_async(args["keys"])
        scope = self._bound(session)
        if scope is not None:  # another namespace's chunks are misses to this connection
            index = self.store.index
            codes = bytes(code if scope.visible(index.get(k), unknown_ok=True) else ABSENT
                          for k, code in zip(args["keys"], codes))
            prefix = codes.find(ABSENT)
            prefix = len(codes) if prefix < 0 else prefix
        reply: dict[str, Any] = {"prefix": prefix, "codes": codes}
        if "plan" in args:
            reply["plan"] = self._plan(args["plan"], codes[:prefix])
        return reply

    def _plan(self, request: dict[str, Any], codes: bytes) -> dict[str, Any]:
        """The cost model's answer for this lookup (`LayoutModels.plan_request`)."""
        tier_names = self.store.tier_names
        return self.models.plan_request(request, self.store.layout, [tier_names[c] for c in codes]).to_dict()

    async def _reserve(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        scope = self._bound(session)
        if scope is not None:
            scope.check_namespace(args["namespace"], "reserve")
        slots = await self.store.reserve(session, args["layout_id"], args["namespace"], args["keys"], args["nbytes"],
                                         first_position=args.get("first_position", 0))
        return {"slots": slots}

    async def _acquire(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        layout_id, keys, prefix_only = args["layout_id"], args["keys"], args.get("prefix_only", True)
        scope = self._bound(session)
        if scope is None:
            lease, slots = await self.store.acquire(session, layout_id, keys, prefix_only=prefix_only)
            return {"lease": lease, "slots": slots}
        _check_key_lengths(keys)
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

    async def _evict(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        keys, namespace, everything = args.get("keys"), args.get("namespace"), args.get("all", False)
        scope = self._bound(session)
        if scope is not None:
            scope.check_namespace(namespace, "evict")
            if keys is not None:
                keys, namespace, everything = self._own_keys(session, keys), None, False
            elif namespace is not None or everything:  # "all" of a bound connection is its namespace
                namespace, everything = scope.namespace, False
        return await self.store.evict(keys=keys, namespace=namespace, tier=args.get("tier"), everything=everything)

    def _ls(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        scope = self._bound(session)
        if scope is not None:
            args = {**args, "namespace": scope.check_namespace(args.get("namespace"), "ls")}
        return {"chunks": self.store.ls(**args)}

    async def _inspect(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        key = args["key"]
        scope = self._bound(session)
        if scope is None:
            return await self.store.inspect(key)
        _check_key_lengths([key])
        hidden = NotFoundError(f"key {key.hex()} is not stored")  # the store's words: nothing to tell apart
        if not scope.visible(self.store.index.get(key), unknown_ok=True) and key in self.store.index:
            raise hidden
        result = await self.store.inspect(key)
        if result.get("namespace") != scope.namespace:
            raise hidden
        return result

    def _observe_prefill(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """A prefill of tokens [start, end) took `seconds` on the engine of `layout_id` (default:
        the layout planned for last): refine its learned device (used by plans when the engine
        declares none)."""
        start, end, seconds = args["start"], args["end"], float(args["seconds"])
        if not 0 <= start < end or not seconds > 0:
            raise InvalidArgumentError(f"observe_prefill: need 0 <= start < end and seconds > 0, got {start}, {end}, {seconds}")
        layout_id = args.get("layout_id")
        if layout_id is not None:
            self.store.layout(layout_id)  # an unregistered layout is an error, not a silent no-op
        learned = self.models.observe_prefill(layout_id, start, end, seconds)
        if learned is None:
            return {"observed": False}  # no shape yet: the engine has not asked for a plan
        return {"observed": True, "device": learned.to_dict()}

    def _costs(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Tier costs, every layout's model, and one model's shape and device: `layout_id`'s, or
        by default the one planned for last."""
        layout_id = args.get("layout_id")
        if layout_id is not None:
            self.store.layout(layout_id)
        found = self.models.model(layout_id)
        model = found[1] if found is not None else None
        return {"tiers": {n: c.to_dict() for n, c in self.store.costs.items()},
                "layout_id": found[0].layout_id if found is not None else None,
                "device": model.device.to_dict() if model is not None else None,
                "shape": model.shape.to_dict() if model is not None else None,
                "models": self.models.to_dict()}

    def _explain(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Where each key is and what loading it costs; plus the plan, when the engine of the
        first key's layout has told the daemon its model (through a lookup with a plan
        request). Counts as no lookup."""
        keys = args["keys"]
        tier_names = self.store.tier_names
        scope = self._bound(session)
        if scope is not None:
            _check_key_lengths(keys)
        rows, codes = [], bytearray()
        for key in keys:
            c = self.store.index.get(key)
            if scope is not None and not scope.visible(c, unknown_ok=True):
                c = None  # another namespace's chunk: absent to this connection
            code = c.tier_code if c is not None else 255
            codes.append(code)
            tier = tier_names[code] if code < len(tier_names) else None
            rows.append({"key": key.hex(), "tier": tier, "size": c.size if c else None,
                         "load_s": self.store.costs[tier].predict(c.size) if c and tier in self.store.costs else None})
        prefix = codes.find(255)
        prefix = len(codes) if prefix < 0 else prefix
        plan = None
        first = self.store.index.get(keys[0]) if keys and codes[0] != 255 else None
        layout = self.store.layouts.get(first.layout_id) if first is not None else None
        if layout is not None:
            prompt = args.get("prompt_tokens") or len(keys) * layout.chunk_tokens + 1
            found = self.models.plan(layout.layout_id, [tier_names[c] for c in codes[:prefix]], prompt)
            plan = found.to_dict() if found is not None else None
        return {"chunks": rows, "prefix": prefix, "plan": plan}

    def _mrc(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
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

    def _quota(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """Show namespaces' quotas and use per local tier; set one (`bytes`) or remove it (`clear`).
        A bound connection sees only its own namespace and sets nothing. A lowered quota applies
        from the namespace's next put or promotion on."""
        bound = self.namespace_of(session)
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

    def _stat(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        stat = self.store.stat()
        stat["namespace"] = self.namespace_of(session)  # this connection's binding
        stat["namespace_denied"] = self.denied
        if self.extra_info is not None:
            stat.update(self.extra_info())
        return stat


#: Largest capacity (in chunks) an `mrc` grid may ask about: beyond 2**53 float64 arithmetic is
#: inexact, and far beyond any cache (2**53 chunks of 1 MiB are 8 ZiB).
MAX_GRID_CHUNKS = 2**53


def _check_key_lengths(keys: list[bytes]) -> None:
    """What the store checks, done before a bound connection's keys are filtered (so a bad key
    is still an error, not a silent miss)."""
    bad = next((k for k in keys if len(k) != KEY_BYTES), None)
    if bad is not None:
        raise InvalidArgumentError(
            f"key {shown(bad)}: keys are {KEY_BYTES}-byte binary values (tierd.keys.chunk_keys makes them)"
        )


def _validate(op: str, schema: dict[str, Arg], request: dict[str, Any]) -> dict[str, Any]:
    unknown = names(set(request) - set(schema) - {"id", "op"})
    if unknown:
        raise InvalidArgumentError(f"{op}: unknown argument(s) {unknown}; expected {sorted(schema)}")
    args: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in request or request[name] is None:
            if spec.required:
                raise InvalidArgumentError(f"{op}: missing argument {name!r}")
            continue
        value = request[name]
        if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
            want = "/".join(t.__name__ for t in spec.types)
            raise InvalidArgumentError(f"{op}: argument {name!r} must be {want}, got {type(value).__name__}")
        if spec.list_of is not None and set(map(type, value)) - {spec.list_of}:
            raise InvalidArgumentError(f"{op}: argument {name!r} must be a list of {spec.list_of.__name__}")
        args[name] = value
    return args
