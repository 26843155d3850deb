"""Admission to the slower tiers: which chunks are worth writing to NVMe or the bucket at all.

Most chunks of a serving workload are used once: a prompt's unshared tail is stored, never read
again, and evicted. Writing it down costs SSD write endurance (or bucket requests and bytes) and
pushes a chunk that might be read out of the tier below. `ReuseAdmission` admits a chunk when it
has been used a second time: a hit while in DRAM, or its key coming back after an earlier copy
was declined (the key is remembered in a bounded ghost list, as Dynamo KVBM's "written to disk
only when used twice" and vLLM's reuse-frequency gate do). `AdmitAll` is the old behaviour.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Protocol


class Admission(Protocol):
    """May a chunk leaving DRAM (used `hits` times since it was stored) be written to a tier?"""

    name: str
    admitted: int
    declined: int

    def admits(self, key: Hashable, hits: int) -> bool: ...


class AdmitAll:
    name = "all"

    def __init__(self) -> None:
        self.admitted = 0
        self.declined = 0

    def admits(self, key: Hashable, hits: int) -> bool:
        self.admitted += 1
        return True


class ReuseAdmission:
    """Admit a chunk on its second use; remember up to `ghosts` declined keys (oldest forgotten
    first) so a chunk stored again after being declined counts as reused."""

    name = "reuse"

    def __init__(self, ghosts: int = 65536) -> None:
        if ghosts < 1:
            raise ValueError("the ghost list must hold at least one key")
        self.ghosts = ghosts
        self._declined: OrderedDict[Hashable, None] = OrderedDict()
        self.admitted = 0
        self.declined = 0

    def admits(self, key: Hashable, hits: int) -> bool:
        """Whether a chunk leaving DRAM with `hits` hits since it was stored may be written down."""
        if hits > 0 or self._declined.pop(key, 1) is None:
            self.admitted += 1
            return True
        self._declined[key] = None
        if len(self._declined) > self.ghosts:
            self._declined.popitem(last=False)
        self.declined += 1
        return False


#: name -> admission filter factory (`--nvme-admission`, `--object-admission`, the simulator).
ADMISSIONS: dict[str, Callable[[], Admission]] = {"all": AdmitAll, "reuse": ReuseAdmission}
