"""Registering tierd's shared-memory arena as pinned memory in a GPU client process.

Why: a device copy from pageable memory goes through a driver bounce buffer at a fraction of
PCIe speed; once the arena is registered (`cudaHostRegister`), device<->arena copies are DMA,
and with unified addressing the kernels can read and write the arena directly (zero-copy
gather into a slot). Registration is per process and must be undone before the mapping goes.

Kernels address the registered arena by its host address, which assumes unified addressing
with `cudaDevAttrCanUseHostPointerForRegisteredMem` (64-bit Linux on any current NVIDIA GPU).

NOT RUN on the development machine (no GPU there); `pin` returns None wherever torch sees no
CUDA device, so callers need no branch of their own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: cudaHostRegisterPortable | cudaHostRegisterMapped: pinned for every context, device-addressable.
_FLAGS = 0x01 | 0x02


@dataclass(slots=True)
class PinnedRegion:
    """One registered address range; `unpin()` (or leaving the `with` block) unregisters it."""

    address: int
    nbytes: int
    _registered: bool = True

    def unpin(self) -> None:
        if self._registered:
            import torch

            rc = int(torch.cuda.cudart().cudaHostUnregister(self.address))
            self._registered = False
            if rc != 0:
                log.warning("tierd: cudaHostUnregister of %d bytes at %#x returned cudaError %d", self.nbytes,
                            self.address, rc)

    def __enter__(self) -> PinnedRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpin()


def pin(buffer: np.ndarray | memoryview | bytearray) -> PinnedRegion | None:
    """Register `buffer` (the arena mapping) as pinned, device-mapped memory. None where there is
    no CUDA device; a failing registration is logged and also gives None (copies still work,
    through the driver's bounce buffer)."""
    try:
        import torch
    except ImportError:
        return None
    if torch.version.cuda is None or not torch.cuda.is_available():
        return None
    arr = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer
    address, nbytes = arr.ctypes.data, arr.nbytes
    rc = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, _FLAGS))
    if rc != 0:
        log.warning("tierd: cudaHostRegister of the %d-byte arena failed (cudaError %d); device copies will not be DMA",
                    nbytes, rc)
        return None
    log.info("tierd: arena registered as pinned memory (%d bytes at %#x)", nbytes, address)
    return PinnedRegion(address, nbytes)
