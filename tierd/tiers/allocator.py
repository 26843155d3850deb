"""Slot allocator for the DRAM arena.

Invariant: the arena is partitioned into allocated extents and free extents; free extents
never touch (they are merged on free), every extent starts on an `align` boundary, and
`used` is the sum of allocated extent lengths. Allocation is best-fit by length, so chunks of
one layout (all the same size) reuse each other's holes exactly and behave like a slab of that
size class, while several layouts can still share one arena. O(log n) per operation.
"""
from __future__ import annotations

import bisect

from sortedcontainers import SortedDict, SortedList


class ExtentAllocator:
    """Best-fit allocator of aligned extents in `[0, size)`. Not thread-safe: the store owns it."""

    def __init__(self, size: int, *, align: int = 4096) -> None:
        self.align = align
        self.size = size - size % align
        self.used = 0
        self._free_by_offset: SortedDict = SortedDict()
        self._free_by_size: SortedList = SortedList()
        if self.size > 0:
            self._add_free(0, self.size)

    def rounded(self, nbytes: int) -> int:
        """Bytes an allocation of `nbytes` really occupies."""
        return -(-nbytes // self.align) * self.align

    def alloc(self, nbytes: int) -> int | None:
        """Offset of a new extent of `nbytes` (rounded up to `align`), or None if none fits."""
        need = self.rounded(max(nbytes, 1))
        i = self._free_by_size.bisect_left((need, -1))
        if i == len(self._free_by_size):
            return None
        length, offset = self._free_by_size[i]
        self._remove_free(offset, length)
        if length > need:
            self._add_free(offset + need, length - need)
        self.used += need
        return offset

    def free(self, offset: int, nbytes: int) -> None:
        """Return an extent given out by `alloc`; merges with free neighbours."""
        length = self.rounded(max(nbytes, 1))
        self.used -= length
        start, end = offset, offset + length
        i = self._free_by_offset.bisect_left(offset)
        if i > 0:
            prev_off = self._free_by_offset.keys()[i - 1]
            prev_len = self._free_by_offset[prev_off]
            if prev_off + prev_len == start:
                self._remove_free(prev_off, prev_len)
                start = prev_off
        nxt_len = self._free_by_offset.get(end)
        if nxt_len is not None:
            self._remove_free(end, nxt_len)
            end += nxt_len
        self._add_free(start, end - start)

    @property
    def largest_free(self) -> int:
        return self._free_by_size[-1][0] if self._free_by_size else 0

    def _add_free(self, offset: int, length: int) -> None:
        self._free_by_offset[offset] = length
        self._free_by_size.add((length, offset))

    def _remove_free(self, offset: int, length: int) -> None:
        del self._free_by_offset[offset]
        self._free_by_size.remove((length, offset))


class RegionAllocator:
    """One `ExtentAllocator` per arena region, in the arena's global offsets: a slot is taken
    from the region of the namespace it is for (`tierd.tiers.arena`), and freed into the region
    its offset lies in. With one region it is exactly an `ExtentAllocator` of the whole arena."""

    def __init__(self, regions: "list[tuple[str | None, int, int]]", *, align: int = 4096) -> None:
        """`regions`: (namespace, base, size) of each region, by increasing base."""
        self.align = align
        self._regions = [(ns, base, ExtentAllocator(size, align=align)) for ns, base, size in regions]
        self._bases = [base for _, base, _ in self._regions]
        self._by_namespace = {ns: i for i, (ns, _, _) in enumerate(self._regions)}
        self.size = sum(a.size for _, _, a in self._regions)

    def region_of(self, namespace: str | None) -> int:
        """The index of the region `namespace`'s chunks live in."""
        return self._by_namespace.get(namespace, self._by_namespace[None])

    def region_at(self, offset: int) -> int:
        return bisect.bisect_right(self._bases, offset) - 1

    @property
    def used(self) -> int:
        return sum(a.used for _, _, a in self._regions)

    def rounded(self, nbytes: int) -> int:
        return self._regions[0][2].rounded(nbytes)  # every region rounds alike (one alignment)

    def alloc(self, nbytes: int, region: int = 0) -> int | None:
        """A global offset of `nbytes` in `region` (default: the shared one), or None if none fits."""
        _, base, a = self._regions[region]
        local = a.alloc(nbytes)
        return None if local is None else base + local

    def free(self, offset: int, nbytes: int) -> None:
        _, base, a = self._regions[self.region_at(offset)]
        a.free(offset - base, nbytes)

    def largest_free(self, region: int = 0) -> int:
        return self._regions[region][2].largest_free

    def region_size(self, region: int) -> int:
        return self._regions[region][2].size
