"""The interface every eviction policy implements; the store calls only this.

A policy orders the copies of one tier: which one should leave first. It never decides alone:
the store walks `candidates()` and skips what may not move (pinned, leased, in flight), so a
policy needs no knowledge of leases or moves. Keys may belong to a group (the store uses the
namespace): `candidates(group)` is the tier's order restricted to that group, so a namespace
over its quota finds its own first victim without walking every other namespace's chunks.

What a KV cache knows and a generic cache does not is passed along with every touch: `depth`,
the chunk's position in the prompt that wrote or read it. Keys are chained (a chunk's key names
its whole prefix), so a chunk is useful only while every shallower chunk of its prompt is
cached too; policies that use prefix structure read it from `depth`, the others ignore it.
The store touches the chunks of one acquire or one commit together, in prompt order (depth
increasing; a chunk promoted from a lower tier is also touched alone when it lands, before its
acquire's touches), so a policy can tell requests apart from the depths alone: a touch not
deeper than the previous one starts a new request (`tierd.policies.prefix.RequestClock`). A
lower tier is touched in write-down order instead, one chunk at a time.

`remove` is called when a copy leaves the tier for any reason (an eviction the store chose from
`candidates`, an explicit delete, a corrupt copy): policies that keep ghosts of evicted keys
(ARC, S3-FIFO) treat every removal as an eviction.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator


class EvictionPolicy(ABC):
    """Orders one tier's copies for eviction; one instance per tier (and per purpose)."""

    #: The name `--dram-policy` / `--nvme-policy` and `tierd mrc --policy` use.
    name: str = ""

    @abstractmethod
    def touch(self, key: bytes, group: str = "", depth: int = 0) -> None:
        """A copy was added or used (insert if new); `group` moves it if it changed; `depth` is
        the chunk's position in its prompt (0 = the first chunk)."""

    @abstractmethod
    def remove(self, key: bytes) -> None:
        """The copy left the tier (a no-op for a key not held)."""

    @abstractmethod
    def candidates(self, group: str | None = None) -> Iterator[bytes]:
        """Keys (of `group`, or all), the one to evict first first; every held key exactly once.
        A policy may reorganise its own state when called (S3-FIFO's reinsertions), but must
        not change while the iterator is consumed, and the caller must not touch or remove keys
        while it consumes one."""

    @abstractmethod
    def __contains__(self, key: bytes) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...
