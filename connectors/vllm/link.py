"""The connector's connection to the daemon: made on first use, dropped on any failure, and
not retried for a couple of seconds, so a daemon that is down costs each request one check of
the clock instead of a connection attempt. Callers treat "no connection" as a cache miss."""
from __future__ import annotations

import logging
import time

from tierd.client import Client
from tierd.errors import TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class DaemonLink:
    def __init__(self, socket: str, layout: Layout, *, name: str, map_arena: bool) -> None:
        self.socket, self.layout, self.name, self.map_arena = socket, layout, name, map_arena
        self._client: Client | None = None
        self._down_until = 0.0

    def client(self) -> Client | None:
        """The connected client, or None while the daemon is unavailable."""
        if self._client is not None:
            return self._client
        if time.monotonic() < self._down_until:
            return None
        try:
            self._client = Client.connect(self.socket, name=self.name, map_arena=self.map_arena, timeout=30)
            self._client.register_layout(self.layout)
        except (TierdError, OSError) as exc:
            log.warning("tierd unavailable at %s (%s); treating requests as misses", self.socket, exc)
            self._client = None
            self._down_until = time.monotonic() + RETRY_SECONDS
        return self._client

    def drop(self, exc: Exception) -> None:
        """A call failed: forget the connection and back off."""
        log.warning("tierd call failed (%s); treating it as a miss", exc)
        client, self._client = self._client, None
        self._down_until = time.monotonic() + RETRY_SECONDS
        if client is not None:
            try:
                client.close()
            except Exception:  # the connection is already broken
                pass

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
