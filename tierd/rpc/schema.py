"""The wire schema: which operations there are, the arguments each takes, and the reply shape.

A request is a map `{"id": int, "op": str, ...args}`; the reply is `{"id", "ok": true, "result"}`
or `{"id", "ok": false, "error": {"code", "message"}}`, where `code` names a class of
`tierd.errors`. The daemon checks every request against `REQUESTS` (argument types here, values
in the store) before it calls anything, so a bad request changes nothing; the client turns an
error reply back into the exception it names (`result_of`). Both ends read the shape from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tierd.errors import InvalidArgumentError, ProtocolError, error_class, names, shown


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of an operation: its accepted types, whether it must be given, and for a
    list (`types == (list,)`) the type of its elements."""

    types: tuple[type, ...]
    required: bool = True
    list_of: type | None = None


_KEYS = Arg((list,), list_of=bytes)
_OPT_KEYS = Arg((list,), required=False, list_of=bytes)
_STR = Arg((str,))
_OPT_STR = Arg((str,), required=False)
_INT = Arg((int,))
_OPT_INT = Arg((int,), required=False)
_OPT_BOOL = Arg((bool,), required=False)

#: Every operation and its arguments (besides "id" and "op").
REQUESTS: dict[str, dict[str, Arg]] = {
    "hello": {"client": _OPT_STR, "namespace": _OPT_STR},
    "ping": {},
    # the arena regions this connection may map; the reply's descriptors travel as SCM_RIGHTS
    "map_arena": {},
    "register_layout": {"layout": Arg((dict,))},
    "lookup": {"keys": _KEYS, "plan": Arg((dict,), required=False)},
    "costs": {"layout_id": _OPT_STR},
    "observe_prefill": {"start": _INT, "end": _INT, "seconds": Arg((float, int)), "layout_id": _OPT_STR},
    "explain": {"keys": _KEYS, "prompt_tokens": _OPT_INT},
    # verify=true: the live canary's scratch slots for stored keys (tierd.store.verify)
    # tokens: each key's token ids, parent: the key before keys[0] (KV events; tierd.store.sessions)
    "reserve": {"layout_id": _STR, "namespace": _STR, "keys": _KEYS, "nbytes": _INT, "first_position": _OPT_INT,
                "verify": _OPT_BOOL, "tokens": Arg((list,), required=False, list_of=list),
                "parent": Arg((bytes,), required=False)},
    "commit": {"keys": _KEYS, "verify": _OPT_BOOL, "tolerance": Arg((float, int), required=False)},
    "abort": {"keys": _KEYS, "verify": _OPT_BOOL},
    "acquire": {"layout_id": _STR, "keys": _KEYS, "prefix_only": _OPT_BOOL},
    "release": {"lease": _INT},
    "evict": {"keys": _OPT_KEYS, "namespace": _OPT_STR, "tier": _OPT_STR, "all": _OPT_BOOL},
    "pin": {"keys": _KEYS},
    "unpin": {"keys": _KEYS},
    "stat": {},
    "layouts": {},
    "ls": {"tier": _OPT_STR, "namespace": _OPT_STR, "key_prefix": _OPT_STR, "sort": _OPT_STR, "limit": _OPT_INT},
    "inspect": {"key": Arg((bytes,))},
    "quota": {"namespace": _OPT_STR, "bytes": _OPT_INT, "clear": _OPT_BOOL},
    "quarantine": {"clear": _OPT_BOOL, "tier": _OPT_STR},
    "mrc": {"grid": Arg((list,), required=False, list_of=int), "gain_per_gib": Arg((float, int), required=False)},
}


def request_op(request: Any) -> tuple[int, str]:
    """The id and op of a request, or ProtocolError saying what is wrong with its envelope."""
    if not isinstance(request, dict):
        raise ProtocolError(f"a request must be a map with 'id' and 'op', got {type(request).__name__}")
    rid, op = request.get("id"), request.get("op")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError(f"request id {shown(rid)}: must be an integer")
    if not isinstance(op, str) or op not in REQUESTS:
        raise ProtocolError(f"unknown op {shown(op)}: known ops are {', '.join(sorted(REQUESTS))}")
    return rid, op


def validate(op: str, request: dict[str, Any]) -> dict[str, Any]:
    """The arguments of `request` (an `op` request), their types checked; unknown ones refused."""
    schema = REQUESTS[op]
    unknown = names(set(request) - set(schema) - {"id", "op"})
    if unknown:
        raise InvalidArgumentError(f"{op}: unknown argument(s) {unknown}; expected {sorted(schema)}")
    args: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in request or request[name] is None:
            if spec.required:
                raise InvalidArgumentError(f"{op}: missing argument {name!r}")
            continue
        value: Any = request[name]
        if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
            want = "/".join(t.__name__ for t in spec.types)
            raise InvalidArgumentError(f"{op}: argument {name!r} must be {want}, got {type(value).__name__}")
        if spec.list_of is not None and {type(v) for v in value} - {spec.list_of}:
            raise InvalidArgumentError(f"{op}: argument {name!r} must be a list of {spec.list_of.__name__}")
        args[name] = value
    return args


def ok_reply(rid: int, result: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, "result": result}


def error_reply(rid: Any, code: str, message: str) -> dict[str, Any]:
    """An error reply; `rid` is None where the request's id could not be read."""
    return {"id": rid, "ok": False, "error": {"code": code, "message": message}}


def result_of(reply: Any) -> Any:
    """The result of a reply, or the `tierd.errors` exception its error names, raised."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ProtocolError(f"malformed reply from daemon: {reply!r}")
    if reply["ok"]:
        return reply["result"]
    err = reply.get("error") or {}
    raise error_class(err.get("code", ""))(err.get("message", "unknown error"))
