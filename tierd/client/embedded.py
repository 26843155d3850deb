"""Embedded mode: the daemon's store and dispatcher inside this process, with no socket.

For tests, notebooks and single-engine setups without a daemon. The store runs on an event loop
in a background thread; each request is handed to the same `Dispatcher` the daemon uses (so
the two can never disagree) and waited for. Built by `Client.embedded(config)`.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from tierd.config import Config
    from tierd.store import TieredStore


@dataclass(slots=True)
class EmbeddedStore:
    """A running in-process store: `call(request) -> reply`, and `close()` to flush and stop it."""

    store: "TieredStore"
    call: Callable[[dict[str, Any]], dict[str, Any]]
    close: Callable[[], None]


def start_embedded(config: "Config", name: str) -> EmbeddedStore:
    """Build the store `config` describes, start it on a loop thread, open one session `name`."""
    # The daemon's parts, imported here: a client that connects to a daemon never loads them.
    from tierd.daemon.assembly import build_store
    from tierd.daemon.dispatch import Dispatcher

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tierd-embedded", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def setup() -> tuple[Any, Any]:
        store = build_store(config)
        await store.start()
        return store, store.open_session(name)

    store, session = run(setup())
    dispatcher = Dispatcher(store)

    def call(request: dict[str, Any]) -> dict[str, Any]:
        return run(dispatcher.handle(session, request))

    def close() -> None:
        run(store.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    return EmbeddedStore(store, call, close)
