"""The shared-memory arena on real /dev/shm files: instant creation, background reservation and
pre-faulting that never changes a byte, a clean stop, a clear error when /dev/shm is short, no
name anyone could open, and one region per tenant."""
from __future__ import annotations

import os
import time

import pytest

from tierd.errors import ConfigError
from tierd.sizes import GiB, MiB
from tierd.tiers.arena import REGION_ALIGN, SHM_DIR, SharedArena, map_fd, region_sizes


def test_a_large_arena_is_created_at_once_and_prefaulted_in_the_background() -> None:
    started = time.monotonic()
    arena = SharedArena(2 * GiB)
    try:
        assert time.monotonic() - started < 0.5  # no populate on the caller's time
        # written before the thread gets there: at the start, in the middle, at the very end
        marks = {0: b"first", GiB + 12345: b"middle", 2 * GiB - 4: b"last"}
        for offset, data in marks.items():
            arena.view(offset, len(data))[:] = data
        other = map_fd(arena.regions[0].fd, arena.size, populate=False)  # a client's own mapping
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
        assert os.fstat(arena.regions[0].fd).st_blocks * 512 >= 2 * GiB
        other.close()
    finally:
        arena.close()


def test_close_stops_the_prefault_thread_early() -> None:
    arena = SharedArena(4 * GiB)
    started = time.monotonic()
    arena.close()
    assert time.monotonic() - started < 5
    snap = arena.prefault.snapshot()
    assert snap["done"] and snap["populated_bytes"] < 4 * GiB  # stopped, not finished


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
    before = set(SHM_DIR.iterdir())
    with pytest.raises(ConfigError, match="cannot allocate the arena in /dev/shm .*use a smaller --dram"):
        SharedArena(too_big)
    assert set(SHM_DIR.iterdir()) == before  # no file left behind


def test_the_arena_has_no_name_in_dev_shm_and_its_file_is_private() -> None:
    before = set(SHM_DIR.iterdir())
    arena = SharedArena(64 * MiB, tenants={"a": None})
    try:
        assert set(SHM_DIR.iterdir()) == before  # O_TMPFILE: nothing anyone could open by path
        for r in arena.regions:
            st = os.fstat(r.fd)
            assert st.st_nlink == 0 and st.st_mode & 0o777 == 0o600
    finally:
        arena.close()


def test_each_tenant_gets_its_own_region_and_offsets_are_global() -> None:
    arena = SharedArena(64 * MiB, tenants={"a": 8 * MiB, "b": None})
    try:
        by_ns = {r.namespace: r for r in arena.regions}
        assert by_ns["a"].size == 8 * MiB
        assert by_ns["b"].size == by_ns[None].size == (56 * MiB // 2) // REGION_ALIGN * REGION_ALIGN
        assert arena.region_for("a") is by_ns["a"] and arena.region_for("other") is by_ns[None]
        b = by_ns["b"]
        arena.view(b.base + 10, 3)[:] = b"bbb"  # a global offset lands in b's own file
        assert map_fd(b.fd, b.size, populate=False)[10:13] == b"bbb"
        assert sum(r.size for r in arena.regions) == arena.size
        assert arena.prefault.wait(60) and arena.prefault.complete
    finally:
        arena.close()


def test_tenants_that_leave_the_shared_region_nothing_are_refused() -> None:
    with pytest.raises(ConfigError, match="too small to give the shared region"):
        region_sizes(8 * MiB, {"a": 8 * MiB})
    with pytest.raises(ConfigError, match="tenant 'a'"):
        region_sizes(3 * MiB, {"a": None})
    assert region_sizes(5 * MiB, {}) == {None: 5 * MiB}  # no tenants: the whole arena, unaligned
