"""`Client`: the blocking client of a daemon, or of an in-process store (embedded mode).

The control plane is msgpack frames on the daemon's Unix socket; the data plane is the shared
arena (`tierd.client.arena`), which the client maps once at `hello`. Puts and gets hand out
`PutBatch` and `GetLease` objects (`tierd.client.batches`) with views into it. A release needs
no answer, so it is pipelined (`_post`): its reply is read before the next call's.

`Client.embedded(config)` runs the daemon's store and dispatcher inside this process
(`tierd.client.embedded`). `namespace=` binds the connection to one namespace
(`tierd.daemon.scope`); puts then default to it.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from tierd.client.arena import ArenaViews
from tierd.client.batches import GetLease, PutBatch, VerifyBatch
from tierd.client.peer import check_daemon_peer, expected_daemon_uid
from tierd.client.protocol import LookupResult, acquire_args, default_socket, hello_args, lookup_args, reserve_args
from tierd.errors import DaemonUnavailableError, PermissionDeniedError
from tierd.layout import Layout
from tierd.rpc import frames
from tierd.rpc.fds import check_fds, close_fds, recv_frame_with_fds
from tierd.rpc.schema import result_of

if TYPE_CHECKING:
    from tierd.config import Config
    from tierd.store import TieredStore

log = logging.getLogger(__name__)


class Client:
    """Blocking client. Thread-safe: calls from several threads are serialised on one connection."""

    def __init__(self, call: Callable[[dict[str, Any]], dict[str, Any]], closer: Callable[[], None], name: str = "",
                 *, map_arena: bool = True,
                 pipe: tuple[Callable[[dict[str, Any]], None], Callable[[], dict[str, Any]]] | None = None,
                 namespace: str | None = None,
                 call_with_fds: Callable[[dict[str, Any]], tuple[dict[str, Any], list[int]]] | None = None) -> None:
        self._send = call
        self._pipe = pipe  # (send only, receive one reply): lets a call go out without waiting
        self._pending = 0
        self._closer = closer
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.layouts: dict[str, Layout] = {}
        #: The in-process store of an embedded client (for tests and notebooks); None otherwise.
        self.store: TieredStore | None = None
        self._socket: socket.socket | None = None
        try:
            info = self._call("hello", **hello_args(name, namespace))
        except BaseException:  # refused (peer check, namespace): do not leak the socket
            closer()
            raise
        self.info = info
        #: The namespace this connection is bound to (None: all); the default of put().
        self.namespace: str | None = info.get("namespace")
        self.arena: ArenaViews | None = None
        self._no_arena: str | None = "this client was connected with map_arena=False: it has no data views"
        if map_arena:
            try:
                self.arena = self._map_arena(call_with_fds)
            except BaseException:
                closer()
                raise
            self._no_arena = None

    def _map_arena(self, call_with_fds: Callable[[dict[str, Any]], tuple[dict[str, Any], list[int]]] | None
                   ) -> ArenaViews:
        """Receive and map the arena regions this connection may hold (`map_arena`)."""
        request = {"id": next(self._ids), "op": "map_arena"}
        if call_with_fds is None:  # in-process: the numbers are this process's own descriptors
            result = result_of(self._send(request))
            fds = [os.dup(fd) for fd in result["fds"]]
        else:
            try:
                reply, fds = call_with_fds(request)
            except (ConnectionError, OSError) as exc:
                raise DaemonUnavailableError(f"lost the connection to tierd during map_arena: {exc}") from None
            try:
                result = result_of(reply)
            except BaseException:
                close_fds(fds)
                raise
            check_fds(fds, len(result["regions"]))
        return ArenaViews(result["regions"], fds, populate=self.info.get("arena_populated", True))

    # -------------------------------------------------------------- constructors

    @classmethod
    def connect(cls, socket_path: str | None = None, *, timeout: float | None = 30.0, name: str = "",
                map_arena: bool = True, namespace: str | None = None,
                daemon_uid: int | str | None = None) -> "Client":
        """Connect to a daemon. `map_arena=False` for control-plane-only clients (no data views);
        `namespace` binds the connection to that namespace (it can only narrow what the daemon
        allows this user). The daemon must run as this user, root, or `daemon_uid` (default
        `$TIERD_DAEMON_UID`): checked before anything is sent (`tierd.client.peer`)."""
        path = socket_path or default_socket()
        expected = expected_daemon_uid(daemon_uid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailableError(
                f"no tierd daemon at {path} ({exc.strerror}); start one with `tierd serve --socket {path}`"
            ) from None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailableError(f"cannot connect to tierd at {path}: {exc}") from None
        try:
            check_daemon_peer(sock, path, expected)
        except BaseException:
            sock.close()
            raise

        def send(request: dict[str, Any]) -> None:
            sock.sendall(frames.pack(request))

        def recv() -> dict[str, Any]:
            return frames.recv_frame(sock)

        def call(request: dict[str, Any]) -> dict[str, Any]:
            send(request)
            return recv()

        def call_with_fds(request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
            send(request)
            return recv_frame_with_fds(sock)

        client = cls(call, sock.close, name, map_arena=map_arena, pipe=(send, recv), namespace=namespace,
                     call_with_fds=call_with_fds)
        client._socket = sock
        return client

    def hand_over(self) -> "tuple[socket.socket, ArenaViews | None]":
        """Give up this connection's socket and arena mapping to another client object (the
        asyncio client does its hand-shake through this one). This object is unusable after."""
        if self._socket is None or self._pending:
            raise RuntimeError("hand_over: only a fresh socket client's connection can be handed over")
        sock, arena, self._socket, self.arena = self._socket, self.arena, None, None
        self._closer = lambda: None
        self._no_arena = "this client handed its connection over"
        return sock, arena

    @classmethod
    def embedded(cls, config: "Config", *, name: str = "embedded") -> "Client":
        """A client of an in-process store built from `config` (no daemon, no socket)."""
        from tierd.client.embedded import start_embedded

        embedded = start_embedded(config, name)
        client = cls(embedded.call, embedded.close, name)
        client.store = embedded.store
        return client

    # -------------------------------------------------------------- plumbing

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            try:
                self._drain_pending()
                reply = self._send({"id": next(self._ids), "op": op, **args})
            except (ConnectionError, OSError) as exc:
                raise DaemonUnavailableError(f"lost the connection to tierd during {op}: {exc}") from None
        return result_of(reply)

    def _post(self, op: str, **args: Any) -> None:
        """Send a request whose reply the caller does not need (a release): no round trip now.
        Its reply is read before the next call; an error in it is logged, not raised."""
        if self._pipe is None:
            self._call(op, **args)
            return
        with self._lock:
            try:
                self._pipe[0]({"id": next(self._ids), "op": op, **args})
            except (ConnectionError, OSError) as exc:
                raise DaemonUnavailableError(f"lost the connection to tierd during {op}: {exc}") from None
            self._pending += 1

    def _drain_pending(self) -> None:
        while self._pending:
            assert self._pipe is not None
            reply = self._pipe[1]()
            self._pending -= 1
            if not reply.get("ok"):
                log.warning("tierd: a pipelined request failed: %s", reply.get("error"))

    def _need_arena(self) -> None:
        """Refuse a put or get up front (nothing reserved or leased) when there is no arena."""
        if self.arena is None:
            raise PermissionDeniedError(self._no_arena or "no arena")

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        if self.arena is None:
            raise PermissionDeniedError(self._no_arena or "no arena")
        return self.arena.view(offset, nbytes)

    def close(self) -> None:
        with self._lock:
            try:
                self._drain_pending()  # the daemon has seen every release before we hang up
            except (ConnectionError, OSError):
                pass
        if self.arena is not None:
            self.arena.close()
        self._closer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------- operations

    def register_layout(self, layout: Layout) -> str:
        layout_id = self._call("register_layout", layout=layout.to_dict())["layout_id"]
        self.layouts[layout_id] = layout
        return layout_id

    def _ensure_layout(self, layout: Layout) -> str:
        if layout.layout_id not in self.layouts:
            self.register_layout(layout)
        return layout.layout_id

    def lookup(self, keys: Sequence[bytes], *, plan: dict[str, Any] | None = None) -> LookupResult:
        """Where the keys are. With `plan` ({"layout_id", "prompt_tokens", "shape", "device"}),
        the reply also carries the cost model's decision as `LookupResult.plan`."""
        return LookupResult.from_reply(self._call("lookup", **lookup_args(keys, plan)), self.info)

    def put(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
            first_position: int = 0, tokens: Sequence[Sequence[int]] | None = None,
            parent: bytes | None = None) -> PutBatch:
        """Reserve slots for `keys`; `first_position` is keys[0]'s chunk index in its prompt.
        `namespace` defaults to the connection's bound namespace, else "default". `tokens`: each
        key's token ids (`layout.chunk_tokens` each), `parent`: the key before keys[0] (none for a
        put from the prompt's start); a daemon with --kv-events publishes them with the chunks."""
        self._need_arena()
        self._ensure_layout(layout)
        r = self._call("reserve", **reserve_args(layout, keys, namespace, self.namespace, first_position,
                                                 tokens, parent))
        return PutBatch(self, layout, keys, r["slots"])

    def verify(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
               tolerance: float = 0.0) -> VerifyBatch:
        """The live canary's put: scratch slots for the keys that are stored, for KV the engine
        has just recomputed; the batch's commit compares them with the stored copies
        (`tierd.store.verify`) and stores nothing."""
        self._need_arena()
        self._ensure_layout(layout)
        r = self._call("reserve", **reserve_args(layout, keys, namespace, self.namespace, 0), verify=True)
        return VerifyBatch(self, layout, keys, r["slots"], tolerance)

    def quarantine(self, *, clear: bool = False, tier: str | None = None) -> dict[str, Any]:
        """The canary's counts per tier and layout and the quarantined tiers; `clear` lifts the
        quarantine of `tier` (default: every tier) first."""
        return self._call("quarantine", **({"clear": True} if clear else {}),
                          **({"tier": tier} if tier is not None else {}))

    def get(self, layout: Layout, keys: Sequence[bytes], *, prefix_only: bool = True) -> GetLease:
        self._need_arena()
        self._ensure_layout(layout)
        r = self._call("acquire", **acquire_args(layout, keys, prefix_only))
        return GetLease(self, layout, r["lease"], r["slots"])

    def put_chunks(self, layout: Layout, keys: Sequence[bytes], payloads: Sequence[Any],
                   namespace: str | None = None, *, tokens: Sequence[Sequence[int]] | None = None) -> int:
        """Copy whole chunks (bytes-like or arrays of `chunk_bytes`) in and commit them, in
        batches of at most a quarter of the arena so a long prompt never needs it all at once.
        `keys` are a prompt's from its first chunk; `tokens`, if given, each chunk's token ids."""
        batch_len = max(1, self.info["arena_bytes"] // 4 // layout.chunk_bytes)
        stored = 0
        for start in range(0, len(keys), batch_len):
            end = start + batch_len
            with self.put(layout, keys[start:end], namespace, first_position=start,
                          tokens=tokens[start:end] if tokens is not None else None,
                          parent=keys[start - 1] if start and tokens is not None else None) as batch:
                for i in batch.reserved:
                    src = np.frombuffer(memoryview(payloads[start + i]).cast("B"), dtype=np.uint8)
                    if src.size != layout.chunk_bytes:
                        raise ValueError(f"payload {start + i} has {src.size} bytes, layout needs {layout.chunk_bytes}")
                    np.copyto(batch.view(i), src)
                stored += batch.commit()
        return stored

    def get_chunks(self, layout: Layout, keys: Sequence[bytes]) -> list[bytes]:
        """Copies of the leading present chunks."""
        with self.get(layout, keys) as lease:
            return [lease.view(i).tobytes() for i in range(lease.count)]

    def evict(self, *, keys: Sequence[bytes] | None = None, namespace: str | None = None,
              tier: str | None = None, everything: bool = False) -> dict[str, int]:
        return self._call("evict", keys=list(keys) if keys is not None else None, namespace=namespace,
                          tier=tier, all=everything)

    def pin(self, keys: Sequence[bytes]) -> int:
        return self._call("pin", keys=list(keys))["pinned"]

    def unpin(self, keys: Sequence[bytes]) -> int:
        return self._call("unpin", keys=list(keys))["unpinned"]

    def stat(self) -> dict[str, Any]:
        return self._call("stat")

    def quota(self, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        """Each namespace's quota and bytes per local tier: {namespace: {"limit", "used"}}."""
        return self._call("quota", **({"namespace": namespace} if namespace is not None else {}))["quotas"]

    def ls(self, **filters: Any) -> list[dict[str, Any]]:
        return self._call("ls", **filters)["chunks"]

    def inspect(self, key: bytes) -> dict[str, Any]:
        return self._call("inspect", key=key)
