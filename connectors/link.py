"""A connector's connection to the daemon: made on first use, dropped on any failure, and not
retried for a couple of seconds, so a daemon that is down costs each engine call one look at
the clock instead of a connection attempt. Every caller treats "no connection" as a miss
(nothing loaded, nothing stored): never an exception into the engine's threads, never KV that
was not read whole from a leased slot.

Each connection checks the daemon's uid before it sends anything (`tierd.client.peer`): a
listener of an untrusted user is treated like no daemon, and logged.

Every connection is bound to the connector's configured namespace (`hello`): it sees and
writes that namespace's chunks only, whatever keys the engine sends, and for a tenant namespace
it maps that tenant's arena region alone (`tierd.daemon.scope`, `tierd.tiers.arena`).

Shared by the vLLM connector (one link per worker thread, arena mapped, optionally pinned for
device copies) and the SGLang backend (one link shared by its storage threads). Thread-safe.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tierd.client import Client
from tierd.errors import DaemonUnavailableError, ProtocolError, TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
#: Errors after which the connection cannot be trusted: reconnect later.
CONNECTION_ERRORS = (DaemonUnavailableError, ProtocolError, ConnectionError, OSError)
#: Run on each new connection (e.g. pin its arena mapping); returns what undoes it before the
#: connection closes, or None.
OnConnect = Callable[[Client], Callable[[], None] | None]


class DaemonLink:
    def __init__(self, socket: str, layout: Layout | None = None, *, name: str, namespace: str,
                 map_arena: bool = False, on_connect: OnConnect | None = None, retry_seconds: float = RETRY_SECONDS,
                 daemon_uid: int | str | None = None) -> None:
        self.socket, self.layout, self.name, self.map_arena = socket, layout, name, map_arena
        #: Every connection is bound to it (a daemon that binds this user elsewhere refuses it).
        self.namespace = namespace
        #: The uid a daemon run as a service user has (None: `$TIERD_DAEMON_UID`, else only this
        #: user or root); any other listener is refused before a byte is sent (`tierd.client.peer`).
        self.daemon_uid = daemon_uid
        self.on_connect = on_connect
        self.retry_seconds = retry_seconds
        self._client: Client | None = None
        self._undo: Callable[[], None] | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    def client(self) -> Client | None:
        """The connected client (with the layout registered), or None while the daemon is unavailable."""
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() < self._down_until:
                return None
            client = None
            try:
                client = Client.connect(self.socket, name=self.name, map_arena=self.map_arena, timeout=30,
                                        namespace=self.namespace, daemon_uid=self.daemon_uid)
                if self.layout is not None:
                    client.register_layout(self.layout)
                self._undo = self.on_connect(client) if self.on_connect is not None else None
                self._client = client
            except (TierdError, OSError) as exc:
                log.warning("tierd unavailable at %s (%s); %s treats requests as misses until it is back",
                            self.socket, exc, self.name)
                if client is not None:
                    _close_quietly(client)
                self._down_until = time.monotonic() + self.retry_seconds
            return self._client

    def set_layout(self, layout: Layout) -> None:
        """The layout every chunk has; registered on this and every later connection."""
        with self._lock:
            self.layout = layout
            client = self._client
        if client is not None:
            try:
                client.register_layout(layout)
            except CONNECTION_ERRORS as exc:
                self.drop(exc)

    def drop(self, exc: BaseException) -> None:
        """A call failed on the connection: forget it and back off."""
        log.warning("tierd call failed (%s); %s treats it as a miss", exc, self.name)
        with self._lock:
            client, self._client = self._client, None
            undo, self._undo = self._undo, None
            self._down_until = time.monotonic() + self.retry_seconds
        _undo_quietly(undo)
        if client is not None:
            _close_quietly(client)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            undo, self._undo = self._undo, None
        _undo_quietly(undo)
        if client is not None:
            _close_quietly(client)


def _undo_quietly(undo: Callable[[], None] | None) -> None:
    if undo is not None:
        try:
            undo()
        except Exception:  # unpinning must not stop the connection from closing
            log.exception("tierd: undoing the connection's set-up failed")


def _close_quietly(client: Client) -> None:
    try:
        client.close()
    except Exception:  # the connection is already broken; nothing to hand back
        pass
