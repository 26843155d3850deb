"""The arena's extent allocator: no overlap, exact accounting, holes merge back."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.tiers.allocator import ExtentAllocator, RegionAllocator

ALIGN = 4096


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40_000), st.integers(0, 1000)), max_size=200))
def test_random_alloc_free_keeps_invariants(ops):
    a = ExtentAllocator(64 * ALIGN + 123, align=ALIGN)
    assert a.size == 64 * ALIGN
    live: dict[int, int] = {}
    for is_alloc, nbytes, pick in ops:
        if is_alloc or not live:
            off = a.alloc(nbytes)
            if off is None:
                assert a.largest_free < a.rounded(nbytes)
                continue
            assert off % ALIGN == 0 and off + a.rounded(nbytes) <= a.size
            for o, n in live.items():  # no overlap with anything live
                assert off + a.rounded(nbytes) <= o or o + a.rounded(n) <= off
            live[off] = nbytes
        else:
            off = sorted(live)[pick % len(live)]
            a.free(off, live.pop(off))
        assert a.used == sum(a.rounded(n) for n in live.values())
    for off, n in list(live.items()):
        a.free(off, n)
    assert a.used == 0 and a.largest_free == a.size  # every hole merged back into one


def test_same_size_chunks_reuse_holes_exactly():
    a = ExtentAllocator(10 * ALIGN, align=ALIGN)
    offs = [a.alloc(ALIGN) for _ in range(10)]
    assert None not in offs and a.alloc(1) is None
    a.free(offs[4], ALIGN)
    assert a.alloc(ALIGN) == offs[4]


def test_region_allocator_takes_from_the_namespaces_region_in_global_offsets() -> None:
    a = RegionAllocator([(None, 0, 8192), ("t", 8192, 4096)])
    assert a.size == 12288 and a.region_of("t") == 1 and a.region_of("other") == 0 and a.region_of(None) == 0
    assert a.alloc(4096, 1) == 8192
    assert a.alloc(1, 1) is None  # the tenant's region is full, the shared one is not borrowed
    assert a.largest_free(1) == 0 and a.largest_free(0) == 8192
    assert a.alloc(4096) == 0 and a.used == 8192
    a.free(8192, 4096)  # freed into the region its offset lies in
    assert a.region_at(8192) == 1 and a.largest_free(1) == 4096 and a.used == 4096
