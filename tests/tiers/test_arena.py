"""The shared-memory arena on real /dev/shm files: instant creation, background reservation and
pre-faulting that never changes a byte, a clean stop, and a clear error when /dev/shm is short."""
from __future__ import annotations

import os
import time

import pytest

from tierd.errors import ConfigError
from tierd.sizes import GiB, MiB
from tierd.tiers.arena import SHM_DIR, SharedArena, map_file


def test_a_large_arena_is_created_at_once_and_prefaulted_in_the_background() -> None:
    started = time.monotonic()
    arena = SharedArena(2 * GiB)
    try:
        assert time.monotonic() - started < 0.5  # no populate on the caller's time
        # written before the thread gets there: at the start, in the middle, at the very end
        marks = {0: b"first", GiB + 12345: b"middle", 2 * GiB - 4: b"last"}
        for offset, data in marks.items():
            arena.view(offset, len(data))[:] = data
        other = map_file(arena.path, arena.size, populate=False)  # a client's own mapping
        other[MiB : MiB + 6] = b"client"
        assert arena.prefault.wait(120), "pre-faulting did not finish"
        snap = arena.prefault.snapshot()
        assert snap["error"] is None and snap["reserved_bytes"] == snap["populated_bytes"] == 2 * GiB
        assert arena.prefault.complete and snap["seconds"] > 0
        for offset, data in marks.items():
            assert bytes(arena.view(offset, len(data))) == data
            assert other[offset : offset + len(data)] == data
        assert bytes(arena.view(MiB, 6)) == b"client"
        # the file's room is reserved: its blocks are allocated, not sparse
        assert os.stat(arena.path).st_blocks * 512 >= 2 * GiB
        other.close()
    finally:
        arena.close()
    assert not arena.path.exists()


def test_close_stops_the_prefault_thread_early() -> None:
    arena = SharedArena(4 * GiB)
    started = time.monotonic()
    arena.close()
    assert time.monotonic() - started < 5
    snap = arena.prefault.snapshot()
    assert snap["done"] and snap["populated_bytes"] < 4 * GiB  # stopped, not finished
    assert not arena.path.exists()


def test_done_callbacks_run_once_whenever_they_are_added() -> None:
    arena = SharedArena(64 * MiB)
    calls: list[str] = []
    arena.prefault.add_done_callback(lambda: calls.append("early"))
    assert arena.prefault.wait(60)
    arena.prefault.add_done_callback(lambda: calls.append("late"))  # already done: runs now
    arena.close()
    assert calls == ["early", "late"]


def test_an_arena_larger_than_free_shared_memory_is_refused_at_once() -> None:
    st = os.statvfs(SHM_DIR)
    too_big = st.f_bavail * st.f_frsize + GiB
    before = set(SHM_DIR.glob(f"tierd-arena-{os.getpid()}-*"))
    with pytest.raises(ConfigError, match="cannot allocate the arena in /dev/shm .*use a smaller --dram"):
        SharedArena(too_big)
    assert set(SHM_DIR.glob(f"tierd-arena-{os.getpid()}-*")) == before  # no file left behind
