"""The connector's connection to the daemon: made on first use, dropped on any failure, and
not retried for a couple of seconds, so a daemon that is down costs each request one check of
the clock instead of a connection attempt. Callers treat "no connection" as a cache miss."""
from __future__ import annotations

import logging
import time
from typing import Callable

from tierd.client import Client
from tierd.errors import TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


#: Run on each new connection (e.g. pin its arena mapping); returns what undoes it before the
#: connection closes, or None.
OnConnect = Callable[[Client], Callable[[], None] | None]


class DaemonLink:
    def __init__(self, socket: str, layout: Layout, *, name: str, map_arena: bool,
                 on_connect: OnConnect | None = None) -> None:
        self.socket, self.layout, self.name, self.map_arena = socket, layout, name, map_arena
        self.on_connect = on_connect
        self._client: Client | None = None
        self._undo: Callable[[], None] | None = None
        self._down_until = 0.0

    def client(self) -> Client | None:
        """The connected client, or None while the daemon is unavailable."""
        if self._client is not None:
            return self._client
        if time.monotonic() < self._down_until:
            return None
        client = None
        try:
            client = Client.connect(self.socket, name=self.name, map_arena=self.map_arena, timeout=30)
            client.register_layout(self.layout)
            self._undo = self.on_connect(client) if self.on_connect is not None else None
            self._client = client
        except (TierdError, OSError) as exc:
            log.warning("tierd unavailable at %s (%s); treating requests as misses", self.socket, exc)
            if client is not None:
                client.close()
            self._down_until = time.monotonic() + RETRY_SECONDS
        return self._client

    def drop(self, exc: Exception) -> None:
        """A call failed: forget the connection and back off."""
        log.warning("tierd call failed (%s); treating it as a miss", exc)
        client, self._client = self._client, None
        self._down_until = time.monotonic() + RETRY_SECONDS
        self._run_undo()
        if client is not None:
            try:
                client.close()
            except Exception:  # the connection is already broken
                pass

    def close(self) -> None:
        self._run_undo()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _run_undo(self) -> None:
        undo, self._undo = self._undo, None
        if undo is not None:
            try:
                undo()
            except Exception:  # unpinning must not stop the connection from closing
                log.exception("tierd: undoing the connection's set-up failed")
