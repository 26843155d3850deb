"""A put's reserved slots (`PutBatch`) and a get's lease (`GetLease`), with views into the arena.

A put reserves slots, the caller copies KV into them (numpy/torch views of the mapping, no
intermediate buffer), and the commit makes them visible. A get acquires a lease, the caller
copies out of the views, and the release lets the daemon move or evict the chunks again. Both
are context managers, so an exception aborts the put or releases the lease. The `Async`
variants are the same objects for `AsyncClient`, awaited.

A `VerifyBatch` is the live canary's put (`tierd.store.verify`): scratch slots for keys that are
stored, written like a put's, and a commit that compares them with the stored copies and
returns what it found instead of storing anything.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from tierd.client.arena import as_tensor
from tierd.layout import Layout

if TYPE_CHECKING:
    from tierd.client.async_client import AsyncClient
    from tierd.client.sync import Client


class _SlotViews:
    """Views into the arena of a batch's slots (None: that chunk has no slot here)."""

    client: "Client | AsyncClient"
    layout: Layout
    slots: list[int | None]
    #: Why a chunk without a slot cannot be viewed, for the IndexError.
    _no_slot = "has no slot"

    def view(self, i: int) -> np.ndarray:
        slot = self.slots[i]
        if slot is None:
            raise IndexError(f"chunk {i} {self._no_slot}")
        return self.client.view(slot, self.layout.chunk_bytes)

    def tensor(self, i: int) -> Any:
        return as_tensor(self.view(i), self.layout)


class PutBatch(_SlotViews):
    """Slots reserved for a put. Write each chunk into `view(i)` (or `tensor(i)`), then leave the
    `with` block (or call `commit()`); on an exception the reservation is aborted instead.
    `Client` makes these, `AsyncClient` the `AsyncPutBatch` below: each variant talks to its own."""

    _no_slot = "has no reserved slot (already stored or no room)"

    def __init__(self, client: "Client | AsyncClient", layout: Layout, keys: Sequence[bytes],
                 slots: list[int | None]) -> None:
        self.client, self.layout, self.keys, self.slots = client, layout, list(keys), slots
        self.done = False

    @property
    def reserved(self) -> list[int]:
        """Indexes (into keys) that got a slot: the chunks this put must write."""
        return [i for i, s in enumerate(self.slots) if s is not None]

    def _finish(self) -> list[bytes]:
        """Mark the batch done; the keys its commit or abort names."""
        self.done = True
        return [self.keys[i] for i in self.reserved]

    def commit(self) -> int:
        keys = self._finish()
        return cast("Client", self.client)._call("commit", keys=keys)["committed"] if keys else 0

    def abort(self) -> None:
        keys = self._finish()
        if keys:
            cast("Client", self.client)._call("abort", keys=keys)

    def __enter__(self) -> "PutBatch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class VerifyBatch(PutBatch):
    """Scratch slots for fresh KV of stored keys (`Client.verify`). Write each chunk into
    `view(i)`, then `commit()` (or leave the `with` block): the daemon compares each with the
    copies it holds and answers {"compared", "diverged", "skipped", "quarantined"}. `tolerance`
    is the relative error allowed for engines whose kernels are not bitwise deterministic
    (0: byte-exact)."""

    _no_slot = "has no scratch slot (not stored, not servable, or no room)"

    def __init__(self, client: "Client | AsyncClient", layout: Layout, keys: Sequence[bytes],
                 slots: list[int | None], tolerance: float = 0.0) -> None:
        super().__init__(client, layout, keys, slots)
        self.tolerance = tolerance
        self.result: dict[str, Any] | None = None

    def commit(self) -> dict[str, Any]:  # type: ignore[override]
        keys = self._finish()
        self.result = (cast("Client", self.client)._call("commit", keys=keys, verify=True, tolerance=self.tolerance)
                       if keys else dict(_NOTHING_COMPARED))
        return self.result

    def abort(self) -> None:
        keys = self._finish()
        if keys:
            cast("Client", self.client)._call("abort", keys=keys, verify=True)


#: What a verify commit of no scratch slot answers (nothing is sent).
_NOTHING_COMPARED: dict[str, Any] = {"compared": 0, "diverged": 0, "skipped": 0, "quarantined": []}


class GetLease(_SlotViews):
    """A lease on the leading present chunks of a get; `count` of them are readable."""

    _no_slot = "is not available in this lease"

    def __init__(self, client: "Client | AsyncClient", layout: Layout, lease: int, slots: list[int | None]) -> None:
        self.client, self.layout, self.lease, self.slots = client, layout, lease, slots
        self.count = next((i for i, s in enumerate(slots) if s is None), len(slots))
        self.released = False

    def _finish(self) -> bool:
        """Mark the lease released; whether the release still has to be sent."""
        first, self.released = not self.released, True
        return first

    def release(self) -> None:
        if self._finish():
            cast("Client", self.client)._post("release", lease=self.lease)

    def __enter__(self) -> "GetLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class AsyncPutBatch(PutBatch):
    """`PutBatch` for `AsyncClient`: `async with`, and `await commit()` / `await abort()`."""

    async def commit(self) -> int:  # type: ignore[override]
        keys = self._finish()
        return (await cast("AsyncClient", self.client).call("commit", keys=keys))["committed"] if keys else 0

    async def abort(self) -> None:  # type: ignore[override]
        keys = self._finish()
        if keys:
            await cast("AsyncClient", self.client).call("abort", keys=keys)

    async def __aenter__(self) -> "AsyncPutBatch":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.done:
            await (self.commit() if exc_type is None else self.abort())


class AsyncGetLease(GetLease):
    """`GetLease` for `AsyncClient`: `async with`, and `await release()`."""

    async def release(self) -> None:  # type: ignore[override]
        if self._finish():
            await cast("AsyncClient", self.client).call("release", lease=self.lease)

    async def __aenter__(self) -> "AsyncGetLease":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()



class AsyncVerifyBatch(VerifyBatch):
    """`VerifyBatch` for `AsyncClient`: `async with`, and `await commit()` / `await abort()`."""

    async def commit(self) -> dict[str, Any]:  # type: ignore[override]
        keys = self._finish()
        self.result = (await cast("AsyncClient", self.client).call("commit", keys=keys, verify=True,
                                                                   tolerance=self.tolerance)
                       if keys else dict(_NOTHING_COMPARED))
        return self.result

    async def abort(self) -> None:  # type: ignore[override]
        keys = self._finish()
        if keys:
            await cast("AsyncClient", self.client).call("abort", keys=keys, verify=True)

    async def __aenter__(self) -> "AsyncVerifyBatch":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.done:
            await (self.commit() if exc_type is None else self.abort())
