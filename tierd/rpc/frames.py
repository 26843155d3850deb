"""Length-prefixed msgpack frames: a 4-byte big-endian body length, then the msgpack body.

Binary values (keys) travel as msgpack bin, text as str. A frame larger than the receiver's
limit is refused before its body is read, so a hostile length cannot make anyone allocate it.
`read_frame` returns None only at a clean end of stream; a frame whose body is msgpack nil is a
ProtocolError, because a reader that took it for the end of the stream would hang up on the
sender without a word (no message of the protocol is nil).
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack

from tierd.errors import ProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20


def pack(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False)
    except Exception as exc:  # StackError (nested too deep) has no text: name it then
        raise ProtocolError(f"frame body is not valid msgpack ({str(exc) or type(exc).__name__})") from None


def check_length(length: int, max_bytes: int) -> None:
    if length > max_bytes:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_bytes} bytes")


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_FRAME) -> Any | None:
    """Next frame's object, or None at a clean end of stream. A truncated frame is an error."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    (length,) = HEADER.unpack(head)
    check_length(length, max_bytes)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError(f"connection closed after part of a {length}-byte frame") from None
    obj = unpack(body)
    if obj is None:  # None means end of stream to our callers: a nil body must not look like one
        raise ProtocolError("frame body is msgpack nil: a request is a map with 'id' and 'op'")
    return obj


def recv_frame(sock: socket.socket, max_bytes: int = DEFAULT_MAX_FRAME) -> Any:
    """Blocking read of one frame from a socket (the sync client's side)."""
    (length,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    check_length(length, max_bytes)
    return unpack(recv_exact(sock, length))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("daemon closed the connection")
        got += k
    return bytes(buf)
