"""Frames: round trips, limits, truncation."""
from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import ProtocolError
from tierd.rpc import frames

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _reader(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip(obj):
    async def go():
        return await frames.read_frame(_reader(frames.pack(obj)))

    if obj is None:  # None is the end of stream to read_frame's callers: a nil body is refused
        with pytest.raises(ProtocolError, match="nil"):
            asyncio.run(go())
    else:
        assert asyncio.run(go()) == obj


async def test_clean_eof_is_none():
    assert await frames.read_frame(_reader(b"")) is None


@pytest.mark.parametrize("data,text", [
    (b"\x00\x00", "inside a frame header"),
    (struct.pack(">I", 10) + b"abc", "after part of"),
    (struct.pack(">I", 100), "exceeds the limit"),
    (struct.pack(">I", 1) + b"\xc1", "not valid msgpack"),
    (struct.pack(">I", 1) + b"\xc0", "msgpack nil"),  # not the end of the stream, not a request
])
async def test_bad_frames(data, text):
    with pytest.raises(ProtocolError, match=text):
        await frames.read_frame(_reader(data), max_bytes=50)


async def test_nesting_beyond_the_decoder_limit_is_named():
    body = b"\x91" * 2000 + b"\xc0"  # 2000 nested arrays: msgpack's StackError, which has no text
    with pytest.raises(ProtocolError, match="StackError"):
        await frames.read_frame(_reader(struct.pack(">I", len(body)) + body))
