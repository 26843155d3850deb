"""The process's pinned address ranges: each range registered with the device once, however many
connections ask, and unregistered when the last one lets go.

Why: a device copy from pageable memory goes through a driver bounce buffer at a fraction of
PCIe speed; once the arena is registered (`cudaHostRegister`), device<->arena copies are DMA
and the kernels read and write the arena directly. Registering is slow (it pins every page)
and per process, and a vLLM worker has two connections (loads and saves) that share one
mapping of each arena region (`tierd.client.arena`): the second asks for the same range and
gets a reference, not a second registration.

How a range is registered is the device's business (`native.device_cuda` calls CUDA; the CPU
device only records it): this module only counts.
"""
from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

#: Registers (address, nbytes) with a device: True when it may now be addressed in place.
Register = Callable[[int, int], bool]
#: Undoes a registration.
Unregister = Callable[[int, int], None]


@dataclass(slots=True)
class _Range:
    nbytes: int
    refs: int
    unregister: Unregister


@dataclass(slots=True)
class PinnedRanges:
    """Registered ranges by start address (one table per device implementation).

    Registering pins every page (seconds for a large arena) and happens under `_registering`
    only, so lookups (`covers`, asked by every load) never wait for it. A range the device
    refused is remembered and not asked again (each connection of the process would)."""

    _ranges: dict[int, _Range] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list)
    _refused: set[tuple[int, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _registering: threading.Lock = field(default_factory=threading.Lock)
    registrations: int = 0  # ranges registered with the device so far (each pinned once)

    def pin(self, address: int, nbytes: int, register: Register, unregister: Unregister) -> "PinnedRange | None":
        """A reference to the registered range, registering it on first use; None if the device
        refused (the caller stages its copies instead)."""
        with self._registering:
            with self._lock:
                found = self._ranges.get(address)
                if found is not None and found.nbytes == nbytes:
                    found.refs += 1
                    return PinnedRange(self, address)
                refused = (address, nbytes) in self._refused
            if found is not None:
                log.warning("tierd: %d bytes at %#x asked to be pinned; %d bytes there already are", nbytes, address,
                            found.nbytes)
                return None
            if refused or not register(address, nbytes):
                with self._lock:
                    self._refused.add((address, nbytes))
                return None
            with self._lock:
                self._ranges[address] = _Range(nbytes, 1, unregister)
                bisect.insort(self._starts, address)
                self.registrations += 1
            return PinnedRange(self, address)

    def _release(self, address: int) -> None:
        with self._registering:
            with self._lock:
                found = self._ranges[address]
                found.refs -= 1
                if found.refs:
                    return
            found.unregister(address, found.nbytes)  # before the entry goes: no new holder in between
            with self._lock:
                del self._ranges[address]
                self._starts.remove(address)

    def covers(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies inside one registered range."""
        with self._lock:
            i = bisect.bisect_right(self._starts, address) - 1
            if i < 0:
                return False
            start = self._starts[i]
            return address + nbytes <= start + self._ranges[start].nbytes

    def __len__(self) -> int:
        return len(self._ranges)


class PinnedRange:
    """One holder's reference to a registered range; `unpin()` lets go (idempotent)."""

    def __init__(self, table: PinnedRanges, address: int) -> None:
        self._table: PinnedRanges | None = table
        self.address = address

    def unpin(self) -> None:
        table, self._table = self._table, None
        if table is not None:
            table._release(self.address)

    def __enter__(self) -> "PinnedRange":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpin()
