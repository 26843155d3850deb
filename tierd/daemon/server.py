"""The daemon: the store plus a msgpack RPC server on a Unix socket, metrics and signals.

Each connection is one store `Session`; requests on a connection are answered in order, and
connections are served concurrently. When a connection closes, cleanly or because its client
died, its reservations and leases go back to the store. SIGTERM/SIGINT stop accepting, let
in-flight requests finish, write DRAM-only chunks down, persist metadata, remove the socket (only
if the path still names the socket this daemon bound: `tierd.sockets`) and exit 0.

Start-up (`tierd.daemon.startup`) puts the socket up as soon as the store's indexes are rebuilt, and
prints one ready line naming the tiers; the arena's pages are pre-faulted and the tiers
calibrated in the background after that. Every accepted connection is checked against the
peer policy (`tierd.daemon.peers`) before its first request: a refused peer gets one error frame
and the connection is closed; an admitted one may be bound to a namespace.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import tierd
from tierd.config import Config
from tierd.daemon.assembly import build_store
from tierd.daemon.dispatch import Dispatcher
from tierd.daemon.peers import PeerCredentials, PeerPolicy, peer_credentials
from tierd.daemon.shutdown import close_store
from tierd.daemon.startup import BackgroundCalibration, prefaulted, ready_line, start_store
from tierd.errors import InternalError, PermissionDeniedError, ProtocolError
from tierd.mrc.observer import AccessObserver
from tierd.rpc import frames
from tierd.rpc.fds import send_frame_with_fds
from tierd.rpc.schema import error_reply
from tierd.store import TieredStore
from tierd.sockets import BoundSocket
from tierd.supervise import log_if_failed

log = logging.getLogger(__name__)


#: How long a refused peer has to read its error frame before the connection is closed.
REFUSAL_LINGER_S = 2.0


class Daemon:
    def __init__(self, config: Config, *, started: float | None = None) -> None:
        self.config = config
        self.started = time.monotonic() if started is None else started
        self.store: TieredStore | None = None
        self.dispatcher: Dispatcher | None = None
        self.metrics_port: int | None = None
        self.peers = PeerPolicy.from_config(config.allow_uids, config.namespaces)
        #: Connections refused by the peer check since start (`stat`, Prometheus).
        self.refused = 0
        self.calibration: BackgroundCalibration | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping = asyncio.Event()
        self._exit_status = 0
        self._connections: set[asyncio.Task[Any]] = set()

    async def run(self) -> int:
        listener = BoundSocket(Path(self.config.socket), self.config.socket_mode)
        try:
            return await self._run(listener)
        finally:
            listener.remove()  # after the store is closed, and only if the path is still our socket

    async def _run(self, listener: BoundSocket) -> int:
        self.store = build_store(self.config)
        self.store.arena.prefault.interval = self.config.progress_interval
        try:
            await start_store(self.store, self.config.progress_interval)
        except BaseException:  # e.g. a missing bucket: stop pre-faulting, give the shared memory back
            self.store.arena.close()
            if self.store.events is not None:  # and the KV-event sockets
                self.store.events.close()
            raise
        self.calibration = BackgroundCalibration(self.store, self.config.calibrate)
        recorder = None
        if self.config.record_trace:
            from tierd.mrc.trace_recorder import TraceRecorder

            recorder = TraceRecorder(self.config.record_trace)
        observer = AccessObserver(self.store, sample_rate=self.config.mrc_sample_rate, recorder=recorder)
        observer.start()
        self.dispatcher = Dispatcher(self.store, extra_info=self._info, observer=observer)
        if self.config.metrics_port is not None:
            from tierd.daemon.metrics import start_metrics

            self.metrics_port = start_metrics(self, self.config.metrics_host, self.config.metrics_port)
        self._server = await asyncio.start_unix_server(self._serve_connection, sock=listener.sock)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        extra = f", metrics on {self.config.metrics_host}:{self.metrics_port}" if self.metrics_port else ""
        line = ready_line(self.config, self.store, time.monotonic() - self.started)
        print(f"{line}{extra}", file=sys.stderr, flush=True)
        background = asyncio.create_task(self._after_ready(), name="tierd-after-ready")
        background.add_done_callback(log_if_failed)  # one-shot: logged if it dies, not restarted
        await self._stopping.wait()
        log.info("shutting down")
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        await self.calibration.drain()
        await observer.stop()
        await close_store(self.store, self.config.progress_interval)
        for sig in (signal.SIGTERM, signal.SIGINT):  # ours end with the daemon (it may run in-process)
            loop.remove_signal_handler(sig)
        print("tierd: stopped", file=sys.stderr, flush=True)
        return self._exit_status

    def stop(self) -> None:
        """Begin the shutdown SIGTERM begins (for a daemon run in-process)."""
        self._stopping.set()

    async def _after_ready(self) -> None:
        """What waits until the socket is up: the arena's pre-faulting (a failure to reserve its
        room stops the daemon: writes into unreserved shared memory could SIGBUS a client), then
        calibration of the tiers."""
        assert self.store is not None and self.calibration is not None
        prefault = self.store.arena.prefault
        await prefaulted(prefault)
        if prefault.error:
            log.error("stopping: %s", prefault.error)
            self._exit_status = 1
            self._stopping.set()
            return
        await self.calibration.run()

    def _info(self) -> dict[str, Any]:
        assert self.store is not None and self.calibration is not None
        return {"config": self.config.to_dict(), "metrics_port": self.metrics_port, "pid": os.getpid(),
                "arena": self.store.arena.prefault.snapshot(), "calibration": self.calibration.state.value,
                "refused_connections": self.refused,
                "kv_events": self.store.events.report() if self.store.events is not None else None}

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.store is not None and self.dispatcher is not None
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = peer_credentials(writer.get_extra_info("socket"))
        if not self.peers.admits(peer):
            try:
                await self._refuse(peer, reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                self._connections.discard(task)
                writer.close()
            return
        assert peer is not None
        session = self.store.open_session()
        self.dispatcher.bind(session, self.peers.namespace_for(peer))
        try:
            while True:
                try:
                    request = await frames.read_frame(reader, self.config.max_frame_bytes)
                except ProtocolError as exc:
                    # The stream is out of step after a bad frame: answer once, then hang up.
                    writer.write(frames.pack(error_reply(None, exc.code, str(exc))))
                    await writer.drain()
                    break
                if request is None:
                    break
                reply = await self.dispatcher.handle(session, request)
                result = reply.get("result") if reply.get("ok") else None
                fds = result.pop("fds", None) if isinstance(result, dict) and request.get("op") == "map_arena" else None
                if fds is not None:  # map_arena: the regions' files go with the reply
                    await send_frame_with_fds(writer, reply, fds)
                    continue
                writer.write(_encode_reply(reply))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.store.close_session(session)
            self.dispatcher.forget(session)
            self._connections.discard(task)
            writer.close()

    async def _refuse(self, peer: PeerCredentials | None, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """One error frame, then hang up. The connection is half-closed and what the peer sends
        is read and dropped for a moment first: closing a Unix socket with unread data makes the
        peer's read fail with ECONNRESET, and the peer should read why it was refused."""
        self.refused += 1
        message = self.peers.refusal(peer)
        log.warning("refused a connection: %s", message)
        error = PermissionDeniedError(message)
        writer.write(frames.pack(error_reply(None, error.code, message)))
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        deadline = time.monotonic() + REFUSAL_LINGER_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not await asyncio.wait_for(reader.read(1 << 16), left):
                    break
            except asyncio.TimeoutError:
                break


def _encode_reply(reply: dict[str, Any]) -> bytes:
    """The reply's frame; a reply msgpack cannot encode (an integer over 2**64, say: a bug) becomes
    an InternalError reply, so the client gets an answer instead of a dropped connection."""
    try:
        return frames.pack(reply)
    except Exception as exc:
        log.exception("reply to request %s could not be encoded", reply.get("id"))
        error = InternalError(f"the reply could not be encoded ({type(exc).__name__}: {exc}); see the daemon's log")
        return frames.pack(error_reply(reply.get("id"), error.code, str(error)))


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT. Uses uvloop as the event loop.

    The "starting" line is the origin of the "ready in" figure of the ready line: what the daemon
    does between the two is what its start-up costs (the interpreter and imports come before)."""
    import uvloop

    started = time.monotonic()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("tierd %s starting (pid %d, uid %d)", tierd.__version__, os.getpid(), os.getuid())
    return uvloop.run(Daemon(config, started=started).run())
