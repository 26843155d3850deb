"""The interface every eviction policy implements; the store calls only this.

A policy orders the copies of one tier: which one should leave first. It never decides alone:
the store walks `candidates()` and skips what may not move (pinned, leased, in flight), so a
policy needs no knowledge of leases or moves. Keys may belong to a group (the store uses the
namespace): `candidates(group)` is the tier's order restricted to that group, so a namespace
over its quota finds its own first victim without walking every other namespace's chunks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator


class EvictionPolicy(ABC):
    """Orders one tier's copies for eviction; one instance per tier (and per purpose)."""

    @abstractmethod
    def touch(self, key: bytes, group: str = "") -> None:
        """A copy was added or used (insert if new); `group` moves it if it changed."""

    @abstractmethod
    def remove(self, key: bytes) -> None:
        """The copy left the tier (a no-op for a key not held)."""

    @abstractmethod
    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """Keys (of `group`, or all), the one to evict first first. Do not change the policy
        while iterating."""

    @abstractmethod
    def __contains__(self, key: bytes) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...
