"""Clients of the store: `Client` (blocking), `AsyncClient` (asyncio) and embedded mode.

The control plane is msgpack frames on the daemon's Unix socket; the data plane is the shared
arena, which the client maps once at `hello`. A put reserves slots, the caller copies KV into
them (numpy/torch views of the mapping, no intermediate buffer), and the commit makes them
visible. A get acquires a lease, the caller copies out of the views, and the release lets the
daemon move or evict the chunks again. Both are context managers, so an exception aborts the
put or releases the lease.

`Client.embedded(config)` runs the same store and the same dispatcher inside this process (on a
background event-loop thread) for tests, notebooks and single-engine setups without a daemon.

The arena is mapped with MAP_POPULATE only once the daemon says its pages are all faulted in
(`hello` → `arena_populated`); a client that connects while the daemon is still pre-faulting
maps it lazily, so connecting never waits for (or duplicates) that work. `namespace=` binds the
connection to one namespace (`tierd.rpc.scope`); puts then default to it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from tierd.errors import DaemonUnavailableError, ProtocolError, error_class
from tierd.layout import Layout
from tierd.rpc import frames
from tierd.tiers.arena import map_file

if TYPE_CHECKING:
    from tierd.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Answer to a lookup: `prefix` leading chunks are present; `codes` has one byte per key,
    the index into `tier_names` of the fastest tier holding it, or 255 if it is absent."""

    prefix: int
    codes: bytes
    tier_names: Sequence[str]
    plan: dict[str, Any] | None = None

    @property
    def tiers(self) -> list[str | None]:
        """The fastest tier holding each key, None where absent."""
        names = self.tier_names
        return [names[c] if c < len(names) else None for c in self.codes]


def default_socket() -> str:
    from tierd.config import default_socket_path

    return os.environ.get("TIERD_SOCKET") or default_socket_path()


def _raise_for(reply: dict[str, Any]) -> Any:
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ProtocolError(f"malformed reply from daemon: {reply!r}")
    if reply["ok"]:
        return reply["result"]
    err = reply.get("error") or {}
    raise error_class(err.get("code", ""))(err.get("message", "unknown error"))


class _ArenaViews:
    """The client's mapping of the daemon's arena, and views of slots in it."""

    def __init__(self, path: str, size: int, *, populate: bool = True) -> None:
        self.mm = map_file(path, size, populate=populate)
        self.array = np.frombuffer(self.mm, dtype=np.uint8)

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        return self.array[offset : offset + nbytes]

    def close(self) -> None:
        del self.array
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the last one
            pass


class PutBatch:
    """Slots reserved for a put. Write each chunk into `view(i)` (or `tensor(i)`), then leave the
    `with` block (or call `commit()`); on an exception the reservation is aborted instead."""

    def __init__(self, client: "Client | AsyncClient", layout: Layout, keys: Sequence[bytes],
                 slots: list[int | None]) -> None:
        self.client, self.layout, self.keys, self.slots = client, layout, list(keys), slots
        self.done = False

    @property
    def reserved(self) -> list[int]:
        """Indexes (into keys) that got a slot: the chunks this put must write."""
        return [i for i, s in enumerate(self.slots) if s is not None]

    def view(self, i: int) -> np.ndarray:
        slot = self.slots[i]
        if slot is None:
            raise IndexError(f"chunk {i} has no reserved slot (already stored or no room)")
        return self.client.view(slot, self.layout.chunk_bytes)

    def tensor(self, i: int) -> Any:
        return _as_tensor(self.view(i), self.layout)

    def commit(self) -> int:
        self.done = True
        keys = [self.keys[i] for i in self.reserved]
        return self.client._call("commit", keys=keys)["committed"] if keys else 0

    def abort(self) -> None:
        self.done = True
        keys = [self.keys[i] for i in self.reserved]
        if keys:
            self.client._call("abort", keys=keys)

    def __enter__(self) -> "PutBatch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class GetLease:
    """A lease on the leading present chunks of a get; `count` of them are readable."""

    def __init__(self, client: "Client | AsyncClient", layout: Layout, lease: int, slots: list[int | None]) -> None:
        self.client, self.layout, self.lease, self.slots = client, layout, lease, slots
        self.count = next((i for i, s in enumerate(slots) if s is None), len(slots))
        self.released = False

    def view(self, i: int) -> np.ndarray:
        slot = self.slots[i]
        if slot is None:
            raise IndexError(f"chunk {i} is not available in this lease")
        return self.client.view(slot, self.layout.chunk_bytes)

    def tensor(self, i: int) -> Any:
        return _as_tensor(self.view(i), self.layout)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.client._post("release", lease=self.lease)

    def __enter__(self) -> "GetLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class AsyncPutBatch(PutBatch):
    """`PutBatch` for `AsyncClient`: `async with`, and `await commit()` / `await abort()`."""

    async def commit(self) -> int:  # type: ignore[override]
        self.done = True
        keys = [self.keys[i] for i in self.reserved]
        return (await self.client.call("commit", keys=keys))["committed"] if keys else 0

    async def abort(self) -> None:  # type: ignore[override]
        self.done = True
        keys = [self.keys[i] for i in self.reserved]
        if keys:
            await self.client.call("abort", keys=keys)

    async def __aenter__(self) -> "AsyncPutBatch":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.done:
            await (self.commit() if exc_type is None else self.abort())


class AsyncGetLease(GetLease):
    """`GetLease` for `AsyncClient`: `async with`, and `await release()`."""

    async def release(self) -> None:  # type: ignore[override]
        if not self.released:
            self.released = True
            await self.client.call("release", lease=self.lease)

    async def __aenter__(self) -> "AsyncGetLease":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


def _as_tensor(view: np.ndarray, layout: Layout) -> Any:
    import torch

    return torch.frombuffer(memoryview(view), dtype=getattr(torch, layout.dtype)).view(layout.chunk_shape)


class Client:
    """Blocking client. Thread-safe: calls from several threads are serialised on one connection."""

    def __init__(self, call: Callable[[dict[str, Any]], dict[str, Any]], closer: Callable[[], None], name: str = "",
                 *, map_arena: bool = True,
                 pipe: tuple[Callable[[dict[str, Any]], None], Callable[[], dict[str, Any]]] | None = None,
                 namespace: str | None = None) -> None:
        self._send = call
        self._pipe = pipe  # (send only, receive one reply): lets a call go out without waiting
        self._pending = 0
        self._closer = closer
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.layouts: dict[str, Layout] = {}
        try:
            info = self._call("hello", client=name or f"pid{os.getpid()}",
                              **({"namespace": namespace} if namespace is not None else {}))
        except BaseException:  # refused (peer check, namespace): do not leak the socket
            closer()
            raise
        self.info = info
        #: The namespace this connection is bound to (None: all); the default of put().
        self.namespace: str | None = info.get("namespace")
        self.arena = _ArenaViews(info["arena_path"], info["arena_bytes"],
                                 populate=info.get("arena_populated", True)) if map_arena else None

    # -------------------------------------------------------------- constructors

    @classmethod
    def connect(cls, socket_path: str | None = None, *, timeout: float | None = 30.0, name: str = "",
                map_arena: bool = True, namespace: str | None = None) -> "Client":
        """Connect to a daemon. `map_arena=False` for control-plane-only clients (no data views);
        `namespace` binds the connection to that namespace (it can only narrow what the daemon
        allows this user)."""
        path = socket_path or default_socket()
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

        def send(request: dict[str, Any]) -> None:
            sock.sendall(frames.pack(request))

        def recv() -> dict[str, Any]:
            return frames.recv_frame(sock)

        def call(request: dict[str, Any]) -> dict[str, Any]:
            send(request)
            return recv()

        return cls(call, sock.close, name, map_arena=map_arena, pipe=(send, recv), namespace=namespace)

    @classmethod
    def embedded(cls, config: "Config", *, name: str = "embedded") -> "Client":
        """A client of an in-process store built from `config` (no daemon, no socket)."""
        from tierd.assembly import build_store
        from tierd.rpc.dispatch import Dispatcher

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

        client = cls(call, close, name)
        client.store = store  # for tests and notebooks that want to look inside
        return client

    # -------------------------------------------------------------- plumbing

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            try:
                self._drain_pending()
                reply = self._send({"id": next(self._ids), "op": op, **args})
            except (ConnectionError, OSError) as exc:
                raise DaemonUnavailableError(f"lost the connection to tierd during {op}: {exc}") from None
        return _raise_for(reply)

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

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        if self.arena is None:
            raise RuntimeError("this client was connected with map_arena=False: it has no data views")
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
        r = self._call("lookup", keys=list(keys), **({"plan": plan} if plan is not None else {}))
        return LookupResult(r["prefix"], r["codes"], self.info["tiers"], r.get("plan"))

    def put(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
            first_position: int = 0) -> PutBatch:
        """Reserve slots for `keys`; `first_position` is keys[0]'s chunk index in its prompt.
        `namespace` defaults to the connection's bound namespace, else "default"."""
        layout_id = self._ensure_layout(layout)
        if namespace is None:
            namespace = self.namespace or "default"
        r = self._call("reserve", layout_id=layout_id, namespace=namespace, keys=list(keys), nbytes=layout.chunk_bytes,
                       first_position=first_position)
        return PutBatch(self, layout, keys, r["slots"])

    def get(self, layout: Layout, keys: Sequence[bytes], *, prefix_only: bool = True) -> GetLease:
        layout_id = self._ensure_layout(layout)
        r = self._call("acquire", layout_id=layout_id, keys=list(keys), prefix_only=prefix_only)
        return GetLease(self, layout, r["lease"], r["slots"])

    def put_chunks(self, layout: Layout, keys: Sequence[bytes], payloads: Sequence[Any],
                   namespace: str | None = None) -> int:
        """Copy whole chunks (bytes-like or arrays of `chunk_bytes`) in and commit them, in
        batches of at most a quarter of the arena so a long prompt never needs it all at once."""
        batch_len = max(1, self.info["arena_bytes"] // 4 // layout.chunk_bytes)
        stored = 0
        for start in range(0, len(keys), batch_len):
            with self.put(layout, keys[start : start + batch_len], namespace, first_position=start) as batch:
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


class AsyncClient:
    """asyncio client for engines that run an event loop. Control-plane calls are awaited; the
    arena views are the same plain memory as in `Client`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.arena: _ArenaViews | None = None
        self.info: dict[str, Any] = {}
        self.layouts: dict[str, Layout] = {}
        self.namespace: str | None = None

    @classmethod
    async def connect(cls, socket_path: str | None = None, *, name: str = "",
                      namespace: str | None = None) -> "AsyncClient":
        path = socket_path or default_socket()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailableError(f"no tierd daemon at {path} ({exc.strerror})") from None
        client = cls(reader, writer)
        try:
            client.info = await client.call("hello", client=name or f"pid{os.getpid()}",
                                            **({"namespace": namespace} if namespace is not None else {}))
        except BaseException:  # refused: do not leak the connection
            writer.close()
            raise
        client.namespace = client.info.get("namespace")
        client.arena = _ArenaViews(client.info["arena_path"], client.info["arena_bytes"],
                                   populate=client.info.get("arena_populated", True))
        return client

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            self._writer.write(frames.pack({"id": next(self._ids), "op": op, **args}))
            await self._writer.drain()
            reply = await frames.read_frame(self._reader)
        if reply is None:
            raise DaemonUnavailableError(f"tierd closed the connection during {op}")
        return _raise_for(reply)

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        assert self.arena is not None
        return self.arena.view(offset, nbytes)

    async def lookup(self, keys: Sequence[bytes]) -> LookupResult:
        r = await self.call("lookup", keys=list(keys))
        return LookupResult(r["prefix"], r["codes"], self.info["tiers"], r.get("plan"))

    async def register_layout(self, layout: Layout) -> str:
        layout_id = (await self.call("register_layout", layout=layout.to_dict()))["layout_id"]
        self.layouts[layout_id] = layout
        return layout_id

    async def put(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
                  first_position: int = 0) -> AsyncPutBatch:
        """Reserve slots; use as `async with await client.put(...) as batch:`. `namespace` defaults
        to the connection's bound namespace, else "default"."""
        if layout.layout_id not in self.layouts:
            await self.register_layout(layout)
        if namespace is None:
            namespace = self.namespace or "default"
        r = await self.call("reserve", layout_id=layout.layout_id, namespace=namespace, keys=list(keys),
                            nbytes=layout.chunk_bytes, first_position=first_position)
        return AsyncPutBatch(self, layout, keys, r["slots"])

    async def get(self, layout: Layout, keys: Sequence[bytes], *, prefix_only: bool = True) -> AsyncGetLease:
        """Lease the leading present chunks; use as `async with await client.get(...) as lease:`."""
        if layout.layout_id not in self.layouts:
            await self.register_layout(layout)
        r = await self.call("acquire", layout_id=layout.layout_id, keys=list(keys), prefix_only=prefix_only)
        return AsyncGetLease(self, layout, r["lease"], r["slots"])

    async def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
        self._writer.close()
        await self._writer.wait_closed()
