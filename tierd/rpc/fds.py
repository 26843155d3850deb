"""File descriptors over the daemon's Unix socket (SCM_RIGHTS): how a client receives the arena.

The arena has no path (`tierd.tiers.arena`), so the only way into it is a descriptor the
daemon chose to send. One request carries them, `map_arena`: its reply frame is sent with the
descriptors attached to its first byte, and the client reads that frame with `recvmsg`.

The daemon's connections are asyncio (uvloop) streams, which cannot send ancillary data. The
reply therefore goes out on a duplicate of the connection's socket, after the stream's own
buffer is empty (so the frame cannot overtake a reply written before it); the client sends
nothing else while it waits for this one.
"""
from __future__ import annotations

import array
import asyncio
import os
import socket
from typing import Any

from tierd.errors import ProtocolError
from tierd.rpc import frames

#: The most descriptors one reply carries (one per arena region a connection may map).
MAX_FDS = 64
#: How long the daemon keeps trying to send a reply with descriptors into a full socket buffer.
SEND_TIMEOUT_S = 5.0


async def send_frame_with_fds(writer: asyncio.StreamWriter, obj: Any, fds: list[int]) -> None:
    """Send `obj` as one frame with `fds` attached, after everything written before it."""
    transport = writer.transport
    high = transport.get_write_buffer_limits()[1]
    transport.set_write_buffer_limits(high=0)  # drain() now waits until the buffer is empty
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high)
    data = frames.pack(obj)
    sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT_S
        sent = 0
        while sent < len(data):  # non-blocking (the flag is the stream's): retry a full buffer
            try:
                if sent == 0:
                    sent = socket.send_fds(sock, [data], fds)
                else:
                    sent += sock.send(data[sent:])
            except BlockingIOError:
                if loop.time() > deadline:
                    raise ConnectionError("the client did not read its arena descriptors") from None
                await asyncio.sleep(0.001)
    finally:
        sock.close()  # the duplicate only: the connection stays open


def recv_frame_with_fds(sock: socket.socket, max_bytes: int = frames.DEFAULT_MAX_FRAME) -> tuple[Any, list[int]]:
    """Blocking read of one frame and the descriptors attached to it (the client's side). The
    caller owns the descriptors (closes them once mapped)."""
    fds: list[int] = []
    head = b""
    while len(head) < frames.HEADER.size:
        data, ancillary, _flags, _addr = sock.recvmsg(frames.HEADER.size - len(head),
                                                      socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize))
        if not data:
            close_fds(fds)
            raise ConnectionError("daemon closed the connection")
        head += data
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
    (length,) = frames.HEADER.unpack(head)
    try:
        frames.check_length(length, max_bytes)
        body = frames.recv_exact(sock, length)
        return frames.unpack(body), fds
    except BaseException:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def check_fds(fds: list[int], expected: int) -> None:
    """A reply that promised `expected` descriptors must carry exactly that many."""
    if len(fds) != expected:
        close_fds(fds)
        raise ProtocolError(f"map_arena: the daemon sent {len(fds)} descriptors for {expected} arena regions")
