"""Operations of the control plane: check a request against the wire schema, hand it to its
handler, shape the reply.

One dispatcher serves both the daemon (requests decoded from socket frames) and embedded mode
(requests handed over in-process), so the two can never disagree. The request and reply shapes
are `tierd.rpc.schema`'s; argument types are checked there, values by the store; either way a
bad request changes nothing and the connection keeps working. A handler that fails in a way
nobody foresaw (a bug) is logged and answered with an `InternalError` reply: the connection
stays up and the client learns where to look.

The handlers are grouped by job: the data path (`data_ops`), the cost model (`plan_ops`), and
the connection and the operator's reports (`admin_ops`). Each consults the connection's
namespace binding (`tierd.daemon.scope`), which the daemon sets from the peer's uid or the
client sets with `hello`.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from tierd.cost.admission import CostAdmission
from tierd.cost.models import LayoutModels
from tierd.daemon.admin_ops import AdminOps
from tierd.daemon.data_ops import DataOps
from tierd.daemon.plan_ops import PlanOps
from tierd.daemon.scope import Bindings
from tierd.errors import InternalError, PermissionDeniedError, TierdError
from tierd.rpc.schema import REQUESTS, error_reply, ok_reply, request_op, validate
from tierd.store import Session, TieredStore

if TYPE_CHECKING:
    from tierd.mrc.observer import AccessObserver

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], Any]


class Dispatcher:
    """Maps op names to handlers. `observe(op, seconds, ok)` lets the server record latency."""

    def __init__(self, store: TieredStore, *, extra_info: Callable[[], Mapping[str, Any]] | None = None,
                 observer: "AccessObserver | None" = None) -> None:
        self.store = store
        #: Each layout's cost model (shape from its engine's plan requests, device declared or
        #: learned from the prefill times its connector reports), and admission judged by them.
        self.models = LayoutModels(lambda: store.costs)
        store.admission = CostAdmission(self.models)
        self.observe: Callable[[str, float, bool], None] | None = None
        self.bindings = Bindings(store.index, frozenset(r.namespace for r in store.arena.regions if r.namespace))
        #: Requests refused because they reached outside their connection's namespace.
        self.denied = 0
        plans = PlanOps(store, self.bindings, self.models)
        self._handlers: dict[str, Handler] = {
            **DataOps(store, self.bindings, plans.plan).handlers(),
            **plans.handlers(),
            **AdminOps(store, self.bindings, observer=observer, extra_info=extra_info,
                       denied=lambda: self.denied).handlers(),
        }
        assert set(self._handlers) == set(REQUESTS), set(self._handlers) ^ set(REQUESTS)

    @property
    def ops(self) -> list[str]:
        return sorted(self._handlers)

    async def handle(self, session: Session, request: Any) -> dict[str, Any]:
        """Reply to one request; never raises for a bad request, nor for a failing handler."""
        rid = request.get("id") if isinstance(request, dict) else None
        op = request.get("op") if isinstance(request, dict) else None
        start = time.perf_counter()
        try:
            rid, op = request_op(request)
            result = self._handlers[op](session, validate(op, request))
            if inspect.isawaitable(result):
                result = await result
            reply = ok_reply(rid, result)
        except TierdError as exc:
            if isinstance(exc, PermissionDeniedError):
                self.denied += 1
            reply = error_reply(rid, exc.code, str(exc))
        except Exception as exc:  # a bug: answer it, keep the connection, leave the traceback in the log
            log.exception("request %s (op %s) failed unexpectedly", rid, op)
            error = InternalError(f"{op} failed unexpectedly ({type(exc).__name__}: {exc}); see the daemon's log")
            reply = error_reply(rid, error.code, str(error))
        if self.observe is not None and isinstance(op, str) and op in self._handlers:
            self.observe(op, time.perf_counter() - start, reply["ok"])
        return reply

    # ---------------------------------------------------------------- namespace bindings

    def bind(self, session: Session, namespace: str | None) -> None:
        """Bind a new connection to `namespace` (None: leave it unbound). The daemon calls it
        with the namespace its peer's uid maps to, before the first request."""
        if namespace is not None:
            self.bindings.bind(session, namespace)

    def forget(self, session: Session) -> None:
        """The connection is gone: drop its binding."""
        self.bindings.forget(session)

    def namespace_of(self, session: Session) -> str | None:
        return self.bindings.namespace_of(session)

