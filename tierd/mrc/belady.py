"""Belady's MIN offline: the most hits any eviction policy could get on a trace.

MIN evicts the cached block whose next use lies furthest in the future (a block never used again
first). With the future known it is optimal: no policy gets more block hits at the same
capacity (Belady 1966; Mattson et al. 1970). It is the bound `tierd mrc --opt` draws beside the
LRU curve and each policy's simulated curve, so an operator sees how much any policy could
still gain.

The cache model is the simulator's (`tierd.mrc.simulate`): a request's chunks are touched in
prompt order; a missed chunk is always inserted (the store holds what a request writes), and
while the tier is full the victim is taken from the chunks already cached, never the one
arriving. Two counts per capacity, as the simulator has:

- block hits: chunks present when their request arrived. MIN maximises this count, so its
  block ratio bounds every policy's block *and* prefix ratio from above.
- prefix hits: the leading run of present chunks, what an engine can use. MIN does not aim at
  this count, so its prefix ratio is what an offline policy *can* reach, not a proven bound;
  with chained keys the two rarely differ (a chunk's next use is never after its child's, so
  MIN keeps a parent at least as long as its child), and the prefix optimum lies between them.

Speed: the next-use position of every reference comes from one numpy pass; each capacity is
then one loop over the references with a max-heap of (next use, key) entries and lazy deletion
(an entry is stale once its key was used again or evicted). Chunks never used again (most of a
serving trace: every prompt's unshared tail) skip the heap: they wait on a stack and are the
first victims. About 0.1 s per capacity for the 288,500-reference Mooncake conversation trace
(3.4 s for the 37 capacities of `tierd mrc`'s default grid on it).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError
from tierd.mrc.curve import Curve, check_grid, make_curve
from tierd.mrc.references import References, flatten_requests, key_ids
from tierd.mrc.simulate import HitRatios


@dataclass(slots=True, frozen=True)
class OptResult(HitRatios):
    """MIN's counts at one capacity (in chunks)."""

    capacity: int
    references: int
    block_hits: int
    prefix_hits: int


def next_uses(ids: np.ndarray) -> np.ndarray:
    """For each position, the position of the next reference to the same key, or len(ids) when
    the key is never referenced again."""
    ids = np.asarray(ids)
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    same = ordered[1:] == ordered[:-1]
    out = np.full(n, n, dtype=np.int64)
    out[order[:-1][same]] = order[1:][same]
    return out


def _request_starts(request_index: np.ndarray) -> np.ndarray:
    """True at the first reference of each request."""
    starts = np.ones(len(request_index), dtype=bool)
    if len(request_index) > 1:
        starts[1:] = request_index[1:] != request_index[:-1]
    return starts


def _min_counts(ids: list[int], nxt: list[int], starts: list[bool], distinct: int, capacity: int) -> tuple[int, int]:
    """(block hits, prefix hits) of MIN at `capacity` over one flattened trace."""
    never = len(ids)
    cached = bytearray(distinct)
    current = [0] * distinct  # the next use recorded for a cached key; heap entries that differ are stale
    heap: list[tuple[int, int]] = []  # (-next use, key)
    dead: list[int] = []  # cached keys never used again: first victims, in any order
    push, pop = heapq.heappush, heapq.heappop
    held = block = prefix = 0
    leading = True
    for t in range(never):
        key = ids[t]
        if starts[t]:
            leading = True
        if cached[key]:
            block += 1
            prefix += leading
        else:
            leading = False
            if held >= capacity:
                if dead:
                    victim = dead.pop()
                else:
                    while True:
                        negative, victim = pop(heap)
                        if cached[victim] and current[victim] == -negative:
                            break
                cached[victim] = 0
            else:
                held += 1
            cached[key] = 1
        nu = nxt[t]
        current[key] = nu
        if nu == never:
            dead.append(key)
        else:
            push(heap, (-nu, key))
    return block, prefix


def belady_refs(refs: References, capacities: Sequence[float] | np.ndarray) -> list[OptResult]:
    """MIN at each capacity (chunks, whole numbers >= 1) over a flattened trace."""
    caps = check_grid(capacities)
    if any(not float(c).is_integer() for c in caps):
        raise InvalidArgumentError(f"capacities {caps.tolist()!r}: MIN counts whole chunks, use whole numbers")
    n = len(refs.request_index)
    if n == 0:
        return [OptResult(int(c), 0, 0, 0) for c in caps]
    ids, distinct = key_ids(refs.keys)
    nxt = next_uses(ids).tolist()
    starts = _request_starts(np.asarray(refs.request_index)).tolist()
    id_list = ids.tolist()
    out = []
    for c in caps:
        block, prefix = _min_counts(id_list, nxt, starts, len(distinct), int(c))
        out.append(OptResult(int(c), n, block, prefix))
    return out


def belady(requests: Iterable[Sequence[Any]], capacities: Sequence[float]) -> list[OptResult]:
    """MIN at each capacity for `requests`, each a prompt's chunk keys in order (ints or bytes)."""
    return belady_refs(flatten_requests(_Keys(keys) for keys in requests), capacities)


def opt_curves(refs: References, capacities: Sequence[float] | np.ndarray) -> tuple[Curve, Curve]:
    """MIN's (block, prefix) hit-rate curves on `capacities`, in the shape of the other curves."""
    results = belady_refs(refs, capacities)
    caps = [r.capacity for r in results]
    return (make_curve(caps, [r.block_hit_ratio for r in results]),
            make_curve(caps, [r.prefix_hit_ratio for r in results]))


class _Keys:
    """A bare key list in the shape `flatten_requests` reads (keys and one size per key)."""

    __slots__ = ("keys", "sizes")

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = list(keys)
        self.sizes = [1] * len(self.keys)
