"""The daemon: the store plus a msgpack RPC server on a Unix socket, metrics and signals.

Each connection is one store `Session`; requests on a connection are answered in order, and
connections are served concurrently. When a connection closes, cleanly or because its client
died, its reservations and leases go back to the store. SIGTERM/SIGINT stop accepting, let
in-flight requests finish, write DRAM-only chunks down, persist metadata, remove the socket and
exit 0.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from tierd.access_observer import AccessObserver
from tierd.assembly import build_store
from tierd.tier_costs import calibrate_costs
from tierd.config import Config
from tierd.errors import ConfigError, ProtocolError
from tierd.rpc import frames
from tierd.rpc.dispatch import Dispatcher
from tierd.store import TieredStore

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: TieredStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.metrics_port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping = asyncio.Event()
        self._connections: set[asyncio.Task[Any]] = set()

    async def run(self) -> int:
        path = Path(self.config.socket)
        _claim_socket_path(path)
        self.store = build_store(self.config)
        await self.store.start()
        if self.config.calibrate:
            store = self.store
            loop = asyncio.get_running_loop()
            store.costs = await loop.run_in_executor(None, functools.partial(calibrate_costs, store, loop=loop))
        recorder = None
        if self.config.record_trace:
            from tierd.trace_recorder import TraceRecorder

            recorder = TraceRecorder(self.config.record_trace)
        observer = AccessObserver(self.store, sample_rate=self.config.mrc_sample_rate, recorder=recorder)
        observer.start()
        self.dispatcher = Dispatcher(self.store, extra_info=self._info, observer=observer)
        if self.config.metrics_port is not None:
            from tierd.metrics import start_metrics

            self.metrics_port = start_metrics(self, self.config.metrics_host, self.config.metrics_port)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve_connection, path=str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, self.config.socket_mode)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        extra = f", metrics on {self.config.metrics_host}:{self.metrics_port}" if self.metrics_port else ""
        print(f"tierd: serving on {path} (arena {self.store.arena.path}){extra}", file=sys.stderr, flush=True)
        await self._stopping.wait()
        log.info("shutting down")
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await observer.stop()
        await self.store.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        print("tierd: stopped", file=sys.stderr, flush=True)
        return 0

    def _info(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "metrics_port": self.metrics_port, "pid": os.getpid()}

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.store is not None and self.dispatcher is not None
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        session = self.store.open_session()
        try:
            while True:
                try:
                    request = await frames.read_frame(reader, self.config.max_frame_bytes)
                except ProtocolError as exc:
                    # The stream is out of step after a bad frame: answer once, then hang up.
                    writer.write(frames.pack({"id": None, "ok": False, "error": {"code": exc.code, "message": str(exc)}}))
                    await writer.drain()
                    break
                if request is None:
                    break
                reply = await self.dispatcher.handle(session, request)
                writer.write(frames.pack(reply))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.store.close_session(session)
            self._connections.discard(task)
            writer.close()


def _claim_socket_path(path: Path) -> None:
    """Refuse to start over a live daemon; remove a stale socket left by a dead one."""
    if not path.parent.is_dir():
        raise ConfigError(f"socket {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a stale socket
        return
    finally:
        probe.close()
    raise ConfigError(f"socket {str(path)!r}: another tierd daemon is already serving there")


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT. Uses uvloop as the event loop."""
    import uvloop

    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return uvloop.run(Daemon(config).run())
