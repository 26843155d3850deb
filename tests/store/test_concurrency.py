"""Hunting races in the store: a hypothesis state machine over a real `TieredStore` (a small
shared-memory DRAM arena that forces demotion, a real NVMe directory, an object tier in memory),
where every step runs several operations at once on one event loop — put (committed or
aborted), get (which promotes), evict from each tier and from all, pin and unpin, demotion
pressure, flush, and a lookup that asks the object tier — each after a drawn number of loop
turns, so the interleavings differ from step to step.

Checked at every loop turn of a step: no chunk is claimed by two moves (a second claim raises
in `Moves._claim`) and a claim is always recorded in `moves.in_flight`; DRAM, NVMe and a quota
are never over their limits (writes in flight included). Checked after every step, once the
store is settled (`tests.store.stores.check_invariants`): each tier's used bytes are the sum of
its copies' sizes and NVMe's copies are exactly its files on disk, counters and eviction orders
match the index, no reservation or lease outlives its session, and every background task is
alive. Every chunk a get serves is compared with the bytes that were put.

The examples are derandomized (the same every run), so a failure reproduces; hypothesis prints
the failing steps.
"""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
import shutil
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Awaitable, Iterator, TypeVar

import numpy as np
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.store.stores import NVME, OBJECT, build_store, check_invariants, get, put, settle
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.store import DRAM, TieredStore

#: 16 KiB chunks: an NVMe file is 20 KiB (a 4 KiB header), an object 16.5 KiB.
LAYOUT = Layout("stateful-model", "bfloat16", 1, 1, 64, chunk_tokens=64)
CHUNK = LAYOUT.chunk_bytes
DRAM_CHUNKS = 6
NVME_FILES = 8
QUOTA = 3 * CHUNK  # namespace "a": 3 chunks in DRAM, 2 files on NVMe
NAMESPACES = ("a", "b")

#: A key is named by its namespace and its place in that namespace's list of keys put so far
#: (taken modulo the list's length when the step runs), so ops drawn up front refer to keys that
#: exist by then; a put adds fresh keys, so room is always being fought for.
KeyRef = tuple[str, int]
key_refs = st.lists(st.tuples(st.sampled_from(NAMESPACES), st.integers(0, 63)), min_size=1, max_size=3, unique=True)


@dataclass(frozen=True)
class Op:
    """One operation of a step; its repr is what a failure report lists."""

    kind: str
    args: tuple[Any, ...] = ()

    def __repr__(self) -> str:
        return f"{self.kind}{self.args}"


T = TypeVar("T")
TIERS = st.sampled_from([DRAM, NVME, OBJECT, None])

ops = st.one_of(
    st.builds(lambda ns, n, commit: Op("put", (ns, n, commit)), st.sampled_from(NAMESPACES), st.integers(1, 3),
              st.booleans() | st.just(True)),
    st.builds(lambda ns, refs: Op("put_again", (ns, refs)), st.sampled_from(NAMESPACES), key_refs),
    st.builds(lambda refs: Op("get", (refs,)), key_refs),
    st.builds(lambda refs, tier: Op("evict", (refs, tier)), key_refs, TIERS),
    st.builds(lambda ns, tier: Op("evict_namespace", (ns, tier)), st.sampled_from(NAMESPACES),
              st.sampled_from([DRAM, NVME, OBJECT])),
    st.builds(lambda refs, pinned: Op("pin", (refs, pinned)), key_refs, st.booleans()),
    st.just(Op("pressure")),
    st.just(Op("flush")),
    st.builds(lambda refs: Op("lookup", (refs,)), key_refs),
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tierd-stateful-"))
        self.loop = asyncio.new_event_loop()
        self.store = build_store(self.root, dram_bytes=DRAM_CHUNKS * CHUNK, nvme_bytes=NVME_FILES * (CHUNK + 4096),
                                 object_bytes=12 * (CHUNK + 512), quotas={"a": QUOTA}, high_watermark=0.8,
                                 low_watermark=0.5)
        self.loop.run_until_complete(self.store.start())
        self.store.register_layout(LAYOUT)
        #: What ran so far, for the failure report (timing makes a failing run hard to replay).
        self.steps: list[str] = []
        #: Keys made so far, by namespace (each a fresh prompt chunk; put or not).
        self.keys: dict[str, list[bytes]] = {ns: [] for ns in NAMESPACES}
        self._made = 0

    def fresh(self, ns: str, n: int) -> list[bytes]:
        self._made += 1
        keys = chunk_keys(LAYOUT, np.arange(64 * n) + 1000 * self._made, namespace=ns)
        self.keys[ns] += keys
        return keys

    def resolve(self, refs: list[KeyRef]) -> list[bytes]:
        keys = [self.keys[ns][i % len(self.keys[ns])] for ns, i in refs if self.keys[ns]]
        return list(dict.fromkeys(keys)) or self.fresh("b", 1)

    async def apply(self, op: Op) -> Any:
        store, args = self.store, op.args
        if op.kind == "put":  # fresh chunks (committed, or aborted as a failed put is)
            ns, n, commit = args
            return await put(store, LAYOUT, ns, self.fresh(ns, n), timeout=0.5, commit=commit)
        if op.kind == "put_again":  # keys put before: stored ones get no slot
            ns, refs = args
            keys = [self.keys[ns][i % len(self.keys[ns])] for _, i in refs] if self.keys[ns] else []
            return await put(store, LAYOUT, ns, list(dict.fromkeys(keys)), timeout=0.5)
        if op.kind == "get":  # promotes what is only below DRAM; checks every served byte
            return await get(store, LAYOUT, self.resolve(args[0]))
        if op.kind == "evict":
            return await store.evict(keys=self.resolve(args[0]), tier=args[1])
        if op.kind == "evict_namespace":
            return await store.evict(namespace=args[0], tier=args[1])
        if op.kind == "pin":
            return store.pin(self.resolve(args[0]), args[1])
        if op.kind == "pressure":  # wake the demoter as DRAM over its high watermark would
            store.dram_room.pressure.set()
            return None
        if op.kind == "flush":
            return await store.moves.flush(2)
        if op.kind == "lookup":  # asks the object tier's prefix probe past the local run
            return await store.lookup_async(self.resolve(args[0]))
        raise AssertionError(op.kind)

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.store.close(flush=False))
        finally:
            self.loop.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _watch_limits(self) -> None:
        """What must hold at every loop turn, moves and writes in flight included."""
        store = self.store
        moving = {c.key for c in store.index.values() if c.moving is not None}
        assert moving == set(store.moves.in_flight), (moving, store.moves.in_flight)
        assert store.alloc.used <= store.alloc.size
        for lower in store.lower:
            assert lower.stats.used_bytes <= lower.stats.capacity_bytes, (lower.name, lower.stats.used_bytes)
        held = sum(r.size for r in store.index.reserved.values() if r.namespace == "a")
        held += sum(c.size for c in store.index.values() if c.namespace == "a" and c.slot is not None)
        assert held <= QUOTA and store.quotas.used(DRAM, "a") <= QUOTA, held
        assert store.quotas.used(NVME, "a") <= QUOTA

    async def _run_watched(self, work: Awaitable[T]) -> T:
        """`work`, with the limits checked at every loop turn while it runs."""
        done = False

        async def watch() -> None:
            while not done:
                self._watch_limits()
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            return await asyncio.wait_for(work, 30)
        finally:
            done = True
            await watcher

    async def _run_step(self, drawn: list[tuple[Op, int]]) -> list[Any]:
        async def after(turns: int, op: Op) -> Any:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await self.apply(op)

        self.steps.append("at once: " + ", ".join(f"{op!r} after {t} turns" for op, t in drawn))
        return await self._run_watched(asyncio.gather(*(after(t, op) for op, t in drawn)))

    @rule(drawn=st.lists(st.tuples(ops, st.integers(0, 4)), min_size=2, max_size=5))
    def concurrently(self, drawn: list[tuple[Op, int]]) -> None:
        with self._reported():
            results = self.loop.run_until_complete(self._run_step(drawn))
            for result in results:
                if isinstance(result, dict):  # an evict's counts
                    assert min(result.values()) >= 0, result
            self.loop.run_until_complete(settle(self.store))

    @rule(b_puts=st.integers(1, 3), a_puts=st.integers(2, 5))
    def crowd(self, b_puts: int, a_puts: int) -> None:
        """Demotion pressure under a quota: puts of two fresh chunks of b fill DRAM with chunks
        still to be written down while one-chunk puts of a (quota: 3 chunks) wait for room, all
        at once, as engines of two tenants would."""
        async def go() -> None:
            puts = [put(self.store, LAYOUT, "b", self.fresh("b", 2), timeout=1.0) for _ in range(b_puts)]
            puts += [put(self.store, LAYOUT, "a", self.fresh("a", 1), timeout=1.0) for _ in range(a_puts)]
            await self._run_watched(asyncio.gather(*puts))
            await settle(self.store)
        self.steps.append(f"crowd: {b_puts} puts of b, {a_puts} of a")
        with self._reported():
            self.loop.run_until_complete(go())

    @rule()
    def unpin_all(self) -> None:
        self.steps.append("unpin all")
        self.store.pin(list(self.store.index), False)

    @invariant()
    def settled_store_is_consistent(self) -> None:
        with self._reported():
            check_invariants(self.store, NAMESPACES)

    @contextmanager
    def _reported(self) -> Iterator[None]:
        """A failure names the steps that led to it."""
        try:
            yield
        except BaseException as exc:
            exc.add_note("steps of this run:\n  " + "\n  ".join(self.steps))
            raise


#: Derandomized: the same steps every run. No shrinking: the interleavings depend on I/O timing as
#: well as on the steps, so a replay need not fail the same way; the failure lists its steps instead.
StoreMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=30, deadline=None, derandomize=True,
                                          phases=[Phase.explicit, Phase.generate], print_blob=False,
                                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestStoreUnderConcurrency = StoreMachine.TestCase
