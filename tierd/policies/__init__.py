"""Eviction policies: which chunk of a tier goes first.

`POLICIES` maps the names `--dram-policy`, `--nvme-policy` and `tierd mrc --policy` accept to
the classes; `make_policy` builds one and refuses an unknown name with the list of known ones.
"""
from __future__ import annotations

from typing import Callable

from tierd.errors import InvalidArgumentError
from tierd.policies.base import EvictionPolicy
from tierd.policies.lru import LRUPolicy

#: name -> policy class (each takes no arguments).
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LRUPolicy,
}

#: The policy a tier uses when none is configured.
DEFAULT_POLICY = "lru"


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy called `name`; InvalidArgumentError naming the known ones otherwise."""
    factory = POLICIES.get(name)
    if factory is None:
        raise InvalidArgumentError(f"unknown eviction policy {name!r}: known are {', '.join(sorted(POLICIES))}")
    return factory()
