"""`AsyncClient`: the client for engines that run an event loop.

Control-plane calls are awaited on asyncio streams; the arena views are the same plain memory
as `Client`'s. What it sends is `tierd.client.protocol`'s, shared with `Client`.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Sequence

import numpy as np

from tierd.client.arena import ArenaViews
from tierd.client.batches import AsyncGetLease, AsyncPutBatch, AsyncVerifyBatch
from tierd.client.protocol import LookupResult, acquire_args, default_socket, lookup_args, reserve_args
from tierd.client.sync import Client
from tierd.errors import DaemonUnavailableError, PermissionDeniedError
from tierd.layout import Layout
from tierd.rpc import frames
from tierd.rpc.schema import result_of


class AsyncClient:
    """asyncio client. Calls from several tasks are serialised on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.arena: ArenaViews | None = None
        self._no_arena: str | None = None
        self.info: dict[str, Any] = {}
        self.layouts: dict[str, Layout] = {}
        self.namespace: str | None = None

    @classmethod
    async def connect(cls, socket_path: str | None = None, *, name: str = "",
                      namespace: str | None = None, daemon_uid: int | str | None = None) -> "AsyncClient":
        """Connect to a daemon; `namespace` binds the connection to that namespace. The daemon
        must run as this user, root, or `daemon_uid` (default `$TIERD_DAEMON_UID`): checked
        before anything is sent (`tierd.client.peer`)."""
        # The hand-shake (peer check, hello, the arena's descriptors over SCM_RIGHTS, which asyncio
        # streams cannot receive) is the blocking client's, in a thread; then its socket is ours.
        handshake = await asyncio.to_thread(Client.connect, socket_path or default_socket(), name=name,
                                            namespace=namespace, daemon_uid=daemon_uid)
        sock, arena = handshake.hand_over()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            if arena is not None:
                arena.close()
            raise
        client = cls(reader, writer)
        client.info, client.namespace, client.arena = handshake.info, handshake.namespace, arena
        return client

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            self._writer.write(frames.pack({"id": next(self._ids), "op": op, **args}))
            await self._writer.drain()
            reply = await frames.read_frame(self._reader)
        if reply is None:
            raise DaemonUnavailableError(f"tierd closed the connection during {op}")
        return result_of(reply)

    def _need_arena(self) -> None:
        """Refuse a put or get up front (nothing reserved or leased) when there is no arena."""
        if self.arena is None:
            raise PermissionDeniedError(self._no_arena or "no arena")

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        if self.arena is None:
            raise PermissionDeniedError(self._no_arena or "no arena")
        return self.arena.view(offset, nbytes)

    async def lookup(self, keys: Sequence[bytes], *, plan: dict[str, Any] | None = None) -> LookupResult:
        """Where the keys are (and with `plan`, the cost model's decision: see `Client.lookup`)."""
        return LookupResult.from_reply(await self.call("lookup", **lookup_args(keys, plan)), self.info)

    async def register_layout(self, layout: Layout) -> str:
        layout_id = (await self.call("register_layout", layout=layout.to_dict()))["layout_id"]
        self.layouts[layout_id] = layout
        return layout_id

    async def _ensure_layout(self, layout: Layout) -> None:
        if layout.layout_id not in self.layouts:
            await self.register_layout(layout)

    async def put(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
                  first_position: int = 0, tokens: Sequence[Sequence[int]] | None = None,
                  parent: bytes | None = None) -> AsyncPutBatch:
        """Reserve slots; use as `async with await client.put(...) as batch:`. `namespace` defaults
        to the connection's bound namespace, else "default"; `tokens` and `parent` as `Client.put`."""
        self._need_arena()
        await self._ensure_layout(layout)
        r = await self.call("reserve", **reserve_args(layout, keys, namespace, self.namespace, first_position,
                                                       tokens, parent))
        return AsyncPutBatch(self, layout, keys, r["slots"])

    async def verify(self, layout: Layout, keys: Sequence[bytes], namespace: str | None = None, *,
                     tolerance: float = 0.0) -> AsyncVerifyBatch:
        """The live canary's put (see `Client.verify`); use as `async with await client.verify(...)`."""
        self._need_arena()
        await self._ensure_layout(layout)
        r = await self.call("reserve", **reserve_args(layout, keys, namespace, self.namespace, 0), verify=True)
        return AsyncVerifyBatch(self, layout, keys, r["slots"], tolerance)

    async def get(self, layout: Layout, keys: Sequence[bytes], *, prefix_only: bool = True) -> AsyncGetLease:
        """Lease the leading present chunks; use as `async with await client.get(...) as lease:`."""
        self._need_arena()
        await self._ensure_layout(layout)
        r = await self.call("acquire", **acquire_args(layout, keys, prefix_only))
        return AsyncGetLease(self, layout, r["lease"], r["slots"])

    async def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
        self._writer.close()
        await self._writer.wait_closed()
