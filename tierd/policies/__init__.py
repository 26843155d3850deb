"""Eviction policies: which chunk of a tier goes first.

`POLICIES` maps the names `--dram-policy`, `--nvme-policy` and `tierd mrc --policy` accept to
the classes; `make_policy` builds one and refuses an unknown name with the list of known ones.

- `lru`: least recently used (`lru.py`).
- `arc`: Adaptive Replacement Cache, recency against frequency with ghost lists (`arc.py`).
- `s3fifo`: small probation FIFO, main FIFO with 2-bit counts, ghost FIFO (`s3fifo.py`).
- `prefix`: LRU by request, deepest chunk first, as a radix-tree cache evicts (`prefix.py`).
- `reuse-gap`: `prefix`'s order, with reused chunks kept longer by the reuse gap the workload
  shows (`reuse_gap.py`).
"""
from __future__ import annotations

from typing import Callable

from tierd.errors import InvalidArgumentError
from tierd.policies.arc import ARCPolicy
from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy
from tierd.policies.prefix import PrefixLRUPolicy
from tierd.policies.reuse_gap import ReuseGapPolicy
from tierd.policies.s3fifo import S3FIFOPolicy

#: name -> policy class (each takes no arguments).
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    cls.name: cls for cls in (LRUPolicy, ARCPolicy, S3FIFOPolicy, PrefixLRUPolicy, ReuseGapPolicy)
}

#: DRAM's policy when none is configured, chosen by `bench/policies.py` (bench/README.md): the
#: only one never more than 0.01 below LRU on any trace and capacity measured (worst -0.009)
#: and above half of Belady's optimum at 5,000 blocks of the conversation trace (0.51 of OPT;
#: LRU 0.32). DRAM sees every use of a chunk in prompt order, which it needs.
DEFAULT_POLICY = "reuse-gap"
#: The policy of the tiers below DRAM when none is configured. They are touched in write-down
#: order, not in the order requests use chunks, which the request-aware policies read as
#: requests; the bench measured them on use order only, so these keep LRU.
LOWER_DEFAULT_POLICY = "lru"


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy called `name`; InvalidArgumentError naming the known ones otherwise."""
    factory = POLICIES.get(name)
    if factory is None:
        raise InvalidArgumentError(f"unknown eviction policy {name!r}: known are {', '.join(sorted(POLICIES))}")
    return factory()
