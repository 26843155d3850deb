"""The backend's connection to the daemon: made on first use, dropped when the daemon goes
away, and not retried for a couple of seconds, so a daemon that is down costs each SGLang
storage call one look at the clock instead of a connection attempt. Every caller treats "no
connection" as a miss (exists → 0, get → not loaded, set → not stored): never an exception
into SGLang's storage threads, never KV that was not read whole from a leased slot."""
from __future__ import annotations

import logging
import threading
import time

from tierd.client import Client
from tierd.errors import DaemonUnavailableError, ProtocolError, TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
#: Errors after which the connection cannot be trusted: reconnect later.
CONNECTION_ERRORS = (DaemonUnavailableError, ProtocolError, ConnectionError, OSError)


class DaemonLink:
    """One shared `Client` (thread-safe) for SGLang's prefetch, backup and query threads."""

    def __init__(self, socket: str, *, name: str, retry_seconds: float = RETRY_SECONDS) -> None:
        self.socket, self.name, self.retry_seconds = socket, name, retry_seconds
        self.layout: Layout | None = None
        self._client: Client | None = None
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
                client = Client.connect(self.socket, name=self.name, timeout=30)
                if self.layout is not None:
                    client.register_layout(self.layout)
                self._client = client
            except (TierdError, OSError) as exc:
                log.warning("tierd unavailable at %s (%s); HiCache L3 reads and writes are misses until it is back",
                            self.socket, exc)
                if client is not None:
                    _close_quietly(client)
                self._down_until = time.monotonic() + self.retry_seconds
            return self._client

    def set_layout(self, layout: Layout) -> None:
        """The layout every chunk of this backend has; registered on this and every later connection."""
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
        log.warning("tierd call failed (%s); treating it as a miss", exc)
        with self._lock:
            client, self._client = self._client, None
            self._down_until = time.monotonic() + self.retry_seconds
        if client is not None:
            _close_quietly(client)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _close_quietly(client)


def _close_quietly(client: Client) -> None:
    try:
        client.close()
    except Exception:  # the connection is already broken; nothing to hand back
        pass
