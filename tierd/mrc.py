"""Hit-rate curves: how the LRU hit ratio grows with capacity, so operators can size tiers.

One pass over an access stream gives, for every reference, its LRU *stack distance* (Mattson
et al., 1970): the capacity an LRU cache needs for that reference to hit. A reference with
distance d hits in every LRU cache of capacity >= d, so the whole curve falls out of one
histogram instead of one simulation per capacity.

- Count-weighted distance: the number of distinct keys referenced since the key's previous
  reference, the key itself included (capacity in blocks).
- Byte-weighted distance: the sum of the sizes of those keys, the key's own size included
  (capacity in bytes). It is exact for an LRU that evicts from the cold end until the total
  fits, provided each key keeps one size (the cache then always holds the longest prefix of
  the recency stack that fits, so a key hits iff the bytes above it plus its own fit).
- Prefix-level hit: a request is a chain of chunk keys and a chunk is only useful when all
  chunks before it are present too. Chunk i of a request hits at capacity C iff
  max(d_0..d_i) <= C (running maximum of the distances along the request). Touching the
  chunks one by one gives the same answer as looking them all up first: while every chunk so
  far hit, the cache's contents have not changed.

Two ways to get the distances:

- `stack_distances` (offline, exact): vectorised with numpy. d(t) = size(t) + bytes referenced
  strictly between the previous reference p and t, minus the bytes of those references that
  are not the last of their key before t. The latter are exactly the reuse intervals nested
  in (p, t); counting them is a "greater elements to the left" count over the sequence of
  previous-reference positions, done by a bottom-up merge sort (O(N log N), each level a
  stable sort of two sorted runs). About 0.1 s for the 288,500-reference Mooncake trace.
- `ShardsMRC` (online, per reference): a Fenwick tree over logical access times
  (`_RecencyTree`), O(log n) per sampled reference, plus SHARDS spatial sampling
  (Waldspurger et al., FAST'15) so only a fraction of keys is tracked:

  * a reference is sampled iff `key_hash(key) < T` where `key_hash` is xxh3-64 of the key
    bytes mod P = 2**32 (ints hash as their 8-byte little-endian encoding), rate R = T / P.
    Sampling by key keeps every reference of a sampled key, so its distances among sampled
    keys are about R times the true ones and are scaled by 1/R.
  * fixed rate: T stays put; memory is about R * distinct keys.
  * fixed size: at most `max_keys` keys are tracked; when one more arrives, the key with the
    largest hash is dropped and T lowered to its hash. Each sampled reference weighs 1/R(t)
    (the references it stands for at the rate of its time), which is the paper's histogram
    rescaling by R_new/R_old done once per sample instead of over the whole histogram.
  * SHARDS-adj: the weight of the sampled references rarely equals the true reference count
    N; a handful of hot keys sampled or not moves it. The difference N - sum(1/R) is added to
    the first histogram bucket (the hot keys it comes from have tiny distances). On the
    Mooncake conversation trace at R = 0.01 it cuts the mean absolute error over 1k..60k
    blocks from 0.027 to 0.003; with very few samples (R = 0.001, ~280 sampled references
    there) it can overshoot, so keep a few thousand sampled keys.
  * prefix variant: chunks are sampled per key (the same hash test) and a sampled chunk's
    prefix distance is the running maximum over the *sampled* chunks of its request so far.
    Sampling whole requests by their first key would not work: most requests share the same
    first chunk (system prompt), so that sample is all or nothing. Per-key sampling drops the
    unsampled predecessors from the maximum, which can only make the estimate optimistic; with
    chained keys it costs almost nothing, because the previous use of chunk i was in a request
    that also used chunks 0..i-1 just before it, so distances along a request hardly ever
    decrease (on the Mooncake trace the exact prefix curve equals the block curve, and the
    sampled prefix curve's error is the block curve's, 0.003 at R = 0.01). On keys that are not
    chained (an i.i.d. Zipf stress trace) the sampled prefix curve is just the block curve,
    optimistic by ~0.35: this estimator relies on tierd's chained keys.

Hit ratios are per reference (chunk), in both count and byte mode.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import xxhash

from tierd.errors import InvalidArgumentError

#: Distance of a first reference (a cold miss): larger than any capacity.
COLD = np.iinfo(np.int64).max

#: SHARDS hash modulus P: a reference is sampled iff key_hash(key) < T, rate R = T / P.
HASH_MODULUS = 1 << 32

GiB = 1 << 30

#: A curve: [capacity, hit_ratio] pairs in increasing capacity order.
Curve = list[list[float]]

UNITS = ("blocks", "bytes")

# Bucket indices are ceil(distance / width); scaled distances such as 3 * (P / T) come out a
# hair above a whole number of blocks, and must not fall into the next bucket.
_BUCKET_SLACK = 1e-9


# --------------------------------------------------------------------------- keys and hashing


def key_bytes(key: Any) -> bytes:
    """The bytes a key is hashed as: bytes as they are, ints as 8-byte little-endian."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        k = int(key)
        try:
            return k.to_bytes(8, "little", signed=k < 0)
        except OverflowError:
            raise InvalidArgumentError(f"key {k}: integer keys must fit in 64 bits") from None
    raise InvalidArgumentError(f"key {key!r}: use bytes or a 64-bit integer as a key")


def key_hash(key: Any) -> int:
    """Deterministic sampling hash of a key in [0, HASH_MODULUS): same in every process."""
    return xxhash.xxh3_64_intdigest(key_bytes(key)) % HASH_MODULUS


def _hashes(keys: Sequence[Any]) -> list[int]:
    """key_hash of every key; the common key types take a fast path (this is the per-reference
    cost of SHARDS for the keys it does not sample)."""
    digest = xxhash.xxh3_64_intdigest
    mask = HASH_MODULUS - 1  # the modulus is a power of two
    out = []
    for k in keys:
        t = type(k)
        if t is bytes:
            out.append(digest(k) & mask)
        elif t is int and 0 <= k < 1 << 63:
            out.append(digest(k.to_bytes(8, "little")) & mask)
        else:
            out.append(digest(key_bytes(k)) & mask)
    return out


def sampling_threshold(rate: float) -> int:
    """The SHARDS threshold T for a sampling rate R in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise InvalidArgumentError(f"sample rate {rate!r}: use a number in (0, 1], e.g. 0.01")
    if not 0.0 < rate <= 1.0:
        raise InvalidArgumentError(f"sample rate {rate!r}: use a number in (0, 1], e.g. 0.01")
    return max(1, round(rate * HASH_MODULUS))


def _key_ids(keys: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Dense ids per reference (0 = first distinct key seen) and the distinct keys by id."""
    if isinstance(keys, np.ndarray) and np.issubdtype(keys.dtype, np.integer):
        distinct, ids = np.unique(keys, return_inverse=True)
        return ids.astype(np.int64, copy=False), distinct.tolist()
    index: dict[Hashable, int] = {}
    setdefault = index.setdefault
    try:
        ids = np.fromiter((setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, Hashable))
        raise InvalidArgumentError(f"key {bad!r}: keys must be bytes or integers") from None
    return ids, list(index)


# --------------------------------------------------------------------------- exact, offline


def _previous_reference(ids: np.ndarray) -> np.ndarray:
    """For each position, the position of the previous reference to the same key, or -1."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    same = ordered[1:] == ordered[:-1]
    prev = np.full(len(ids), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _weight_of_greater_to_the_left(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """g[k] = sum of weights[l] over l < k with values[l] > values[k]; values distinct, >= 0.

    Bottom-up merge sort: at the level of width w, each right half-block is charged for the
    elements of its left half-block that are larger. Every pair (l, k) meets at exactly one
    level. `order` holds indices sorted by value within blocks of width w, so each level's
    stable sort only merges two sorted runs per block.
    """
    n = len(values)
    out = np.zeros(n, dtype=weights.dtype)
    if n < 2:
        return out
    span = np.int64(int(values.max()) + 1)
    order = np.arange(n, dtype=np.int64)
    width = 1
    while width < n:
        block = order // (2 * width)
        perm = np.argsort(block * span + values[order], kind="stable")
        order = order[perm]
        block = block[perm]
        is_left = (order % (2 * width)) < width
        cum = np.cumsum(np.where(is_left, weights[order], 0))
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        ends = np.r_[starts[1:], n]
        before = np.r_[0, cum][starts]  # left weight before each block
        in_block = np.repeat(np.arange(len(starts)), ends - starts)
        left_total = cum[ends - 1] - before
        left_smaller = cum - before[in_block]
        right = ~is_left
        out[order[right]] += (left_total[in_block] - left_smaller)[right]
        width *= 2
    return out


def stack_distances(keys: Sequence[Hashable] | np.ndarray, sizes: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Exact LRU stack distance of every reference (COLD for first references).

    Count-weighted when `sizes` is None, else byte-weighted with `sizes[i]` the size of the key
    at reference i (a key should keep one size; if it changes, the size at a key's latest
    reference is what occupies the cache). int64 array, one entry per reference.
    """
    n = len(keys)
    if sizes is None:
        size = np.ones(n, dtype=np.int64)
    else:
        size = np.asarray(sizes, dtype=np.int64)
        if size.shape != (n,):
            raise InvalidArgumentError(f"{size.shape[0] if size.ndim else 0} sizes for {n} keys: pass one size per key")
        if n and size.min() < 0:
            raise InvalidArgumentError(f"size {int(size.min())}: sizes must not be negative")
    dist = np.full(n, COLD, dtype=np.int64)
    if n == 0:
        return dist
    ids, _ = _key_ids(keys)
    prev = _previous_reference(ids)
    reuse = np.flatnonzero(prev >= 0)
    before = prev[reuse]
    nested = _weight_of_greater_to_the_left(before, size[before])
    cum = np.r_[0, np.cumsum(size)]
    dist[reuse] = size[reuse] + (cum[reuse] - cum[before + 1]) - nested
    return dist


def running_max_by_request(values: np.ndarray, request_index: np.ndarray) -> np.ndarray:
    """Running maximum of `values` along each request (requests are contiguous, in order).

    This turns chunk distances into prefix distances: chunk i of a request is a prefix hit at
    capacity C iff it and every chunk before it in the request hit.
    """
    if len(values) == 0:
        return values.copy()
    distinct, rank = np.unique(values, return_inverse=True)
    span = np.int64(len(distinct))
    segment = np.cumsum(np.r_[0, request_index[1:] != request_index[:-1]]).astype(np.int64)
    shifted = np.maximum.accumulate(rank.astype(np.int64) + segment * span)
    return distinct[shifted - segment * span]


def hit_ratios(distances: np.ndarray, capacities: Sequence[float] | np.ndarray, *, weights: np.ndarray | None = None,
               total: float | None = None) -> np.ndarray:
    """Fraction of references with distance <= each capacity (weighted if `weights`)."""
    caps = np.asarray(capacities, dtype=np.float64)
    d = np.asarray(distances)
    if weights is None:
        denominator = float(len(d)) if total is None else float(total)
        hits = np.searchsorted(np.sort(d), caps, side="right").astype(np.float64)
    else:
        order = np.argsort(d, kind="stable")
        cum = np.r_[0.0, np.cumsum(np.asarray(weights, dtype=np.float64)[order])]
        hits = cum[np.searchsorted(d[order], caps, side="right")]
        denominator = float(cum[-1]) if total is None else float(total)
    if denominator <= 0:
        return np.zeros(len(caps))
    return np.clip(hits / denominator, 0.0, 1.0)


def make_curve(capacities: Sequence[float] | np.ndarray, ratios: Sequence[float] | np.ndarray) -> Curve:
    """[capacity, hit_ratio] pairs: capacities as ints where whole, ratios rounded to 1e-6."""
    out: Curve = []
    for c, h in zip(np.asarray(capacities).tolist(), np.asarray(ratios).tolist()):
        out.append([int(c) if float(c).is_integer() else float(c), round(float(h), 6)])
    return out


def check_grid(grid: Iterable[float]) -> np.ndarray:
    """A sorted, de-duplicated array of positive finite capacities."""
    try:
        caps = np.asarray(sorted(set(float(c) for c in grid)), dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"grid {grid!r}: use positive numbers, e.g. 1000,2000,5000") from None
    if len(caps) == 0:
        raise InvalidArgumentError("empty capacity grid: give at least one positive capacity")
    if not np.all(np.isfinite(caps)) or caps[0] <= 0:
        raise InvalidArgumentError(f"grid {caps.tolist()!r}: capacities must be positive and finite")
    return caps


def default_grid(distinct: int, points: int = 40) -> list[int]:
    """Evenly spaced capacities with a round step (1, 2 or 5 times a power of ten) that reach
    the number of distinct keys, where every LRU curve has flattened."""
    distinct = max(1, int(distinct))
    raw = max(1.0, distinct / max(1, points))
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    count = max(1, math.ceil(distinct / step))
    return [int(step * i) for i in range(1, count + 1)]


def mean_abs_error(a: Curve, b: Curve) -> float:
    """Mean |hit_a - hit_b| over the capacities the two curves share."""
    hb = {float(c): h for c, h in b}
    diffs = [abs(h - hb[float(c)]) for c, h in a if float(c) in hb]
    if not diffs:
        raise InvalidArgumentError("the two curves share no capacity: evaluate them on the same grid")
    return float(np.mean(diffs))


# --------------------------------------------------------------------------- references


@dataclass(slots=True)
class References:
    """A request stream flattened into per-chunk arrays, the form the offline functions take."""

    keys: list[Any] | np.ndarray
    sizes: np.ndarray
    request_index: np.ndarray
    requests: int


def flatten_requests(requests: Iterable[Any]) -> References:
    """Flatten objects with `.keys` and `.sizes` (e.g. tierd.traces.TraceRequest) into arrays."""
    keys: list[Any] = []
    sizes: list[int] = []
    lengths: list[int] = []
    for req in requests:
        if len(req.sizes) != len(req.keys):
            raise InvalidArgumentError(f"request with {len(req.keys)} keys and {len(req.sizes)} sizes: pass one size per key")
        keys.extend(req.keys)
        sizes.extend(req.sizes)
        lengths.append(len(req.keys))
    flat: list[Any] | np.ndarray = keys
    if keys and all(type(k) is int for k in keys[:1000]):
        try:
            flat = np.asarray(keys, dtype=np.int64)
        except (OverflowError, TypeError, ValueError):
            flat = keys
    return References(
        keys=flat,
        sizes=np.asarray(sizes, dtype=np.int64),
        request_index=np.repeat(np.arange(len(lengths), dtype=np.int64), lengths),
        requests=len(lengths),
    )


def shards_mask(keys: Sequence[Hashable] | np.ndarray, rate: float) -> np.ndarray:
    """Which references fixed-rate SHARDS samples at `rate` (the same test ShardsMRC applies)."""
    threshold = sampling_threshold(rate)
    ids, distinct = _key_ids(keys)
    sampled_key = np.asarray(_hashes(distinct), dtype=np.int64) < threshold
    return sampled_key[ids] if len(ids) else np.zeros(0, dtype=bool)


def shards_fixed_rate_curves(refs: References, grid: Sequence[float], rate: float, *, unit: str = "blocks",
                             adjust: bool = True) -> tuple[Curve, Curve]:
    """Offline fixed-rate SHARDS (block curve, prefix curve), vectorised.

    Gives the same histogram as feeding the references to `ShardsMRC.fixed_rate(rate)`, at
    numpy speed: sample by key, take exact distances of the sampled subsequence, scale by 1/R.
    """
    if unit not in UNITS:
        raise InvalidArgumentError(f"unit {unit!r}: use 'blocks' or 'bytes'")
    threshold = sampling_threshold(rate)
    mask = shards_mask(refs.keys, rate)
    keys = refs.keys[mask] if isinstance(refs.keys, np.ndarray) else [k for k, m in zip(refs.keys, mask) if m]
    sizes = refs.sizes[mask]
    raw = stack_distances(keys, sizes if unit == "bytes" else None)
    scaled = np.where(raw == COLD, np.inf, raw * (HASH_MODULUS / threshold))
    prefix = running_max_by_request(scaled, refs.request_index[mask])
    width = float(max(1, int(sizes[0]))) if unit == "bytes" and len(sizes) else 1.0  # as ShardsMRC does
    weight = HASH_MODULUS / threshold
    curves = []
    for dist in (scaled, prefix):
        hist = _Histogram(width=width)
        hist.add_many(dist, weight)
        curves.append(hist.curve(grid, references=len(refs.sizes), adjust=adjust))
    return curves[0], curves[1]


# --------------------------------------------------------------------------- online, sampled


class _RecencyTree:
    """Tracked keys' weights, indexed by the logical time of each key's latest access.

    Invariant: slot t holds the weight of the key whose latest access got time t (and
    `_keys[t]` names it), or 0 when that key has been accessed again or dropped since. The
    weight of the keys accessed after time p is therefore `total - prefix(p)`: the LRU stack
    above a key, in O(log n) with a Fenwick tree. Times only grow; when they reach the end of
    the arrays, the live slots are renumbered 0..m-1 in order into arrays of size 2m, so the
    memory is O(tracked keys) and the renumbering O(1) amortised per access.
    """

    __slots__ = ("_tree", "_weight", "_keys", "_time", "_next", "_size", "_total", "_min_size")

    def __init__(self, min_size: int = 1024) -> None:
        self._min_size = min_size
        self._time: dict[Hashable, int] = {}
        self._total = 0
        self._rebuild([])

    def __len__(self) -> int:
        return len(self._time)

    def touch(self, key: Hashable, weight: int) -> int | None:
        """Move `key` to the top; return the weight above it plus its own, None if new."""
        t = self._time.get(key)
        above: int | None = None
        if t is not None:
            above = self._total - self._prefix(t) + weight
            self._vacate(t)
        t = self._next
        if t == self._size:
            self._rebuild([(k, self._weight[i]) for i, k in enumerate(self._keys) if k is not None])
            t = self._next
        self._add(t, weight)
        self._weight[t] = weight
        self._keys[t] = key
        self._time[key] = t
        self._total += weight
        self._next = t + 1
        return above

    def drop(self, key: Hashable) -> None:
        """Stop tracking `key` (fixed-size SHARDS evicting it from the sample)."""
        t = self._time.pop(key, None)
        if t is not None:
            self._vacate(t)

    def _vacate(self, t: int) -> None:
        w = self._weight[t]
        self._add(t, -w)
        self._total -= w
        self._weight[t] = 0
        self._keys[t] = None

    def _add(self, t: int, delta: int) -> None:
        tree, size = self._tree, self._size
        i = t + 1
        while i <= size:
            tree[i] += delta
            i += i & -i

    def _prefix(self, t: int) -> int:
        tree, s, i = self._tree, 0, t + 1
        while i:
            s += tree[i]
            i &= i - 1
        return s

    def _rebuild(self, live: list[tuple[Hashable, int]]) -> None:
        size = max(self._min_size, 2 * len(live))
        self._size = size
        self._keys: list[Hashable | None] = [None] * size
        self._weight = [0] * size
        tree = [0] * (size + 1)
        for t, (key, w) in enumerate(live):
            self._keys[t] = key
            self._weight[t] = w
            self._time[key] = t
            tree[t + 1] = w
        for i in range(1, size + 1):  # linear-time Fenwick build
            j = i + (i & -i)
            if j <= size:
                tree[j] += tree[i]
        self._tree = tree
        self._next = len(live)


@dataclass(slots=True)
class _Histogram:
    """Weighted distances in buckets of `width` (bucket i holds distances in ((i-1)w, iw]).

    Memory stays bounded: past `max_buckets` buckets the width doubles and neighbours merge.
    A bucket counts as a hit at capacity C only when its upper edge is <= C, so coarsening can
    only understate the hit ratio, by at most one bucket's width of capacity.
    """

    width: float
    max_buckets: int = 1 << 15
    buckets: dict[int, float] = field(default_factory=dict)
    cold: float = 0.0
    sampled: float = 0.0  # total weight added, cold included

    def add(self, distance: float, weight: float) -> None:
        self.sampled += weight
        if distance == math.inf:
            self.cold += weight
            return
        i = max(1, math.ceil(distance / self.width - _BUCKET_SLACK))
        self.buckets[i] = self.buckets.get(i, 0.0) + weight
        if len(self.buckets) > self.max_buckets:
            self._coarsen()

    def add_many(self, distances: np.ndarray, weight: float) -> None:
        finite = np.isfinite(distances)
        self.cold += weight * float(np.count_nonzero(~finite))
        self.sampled += weight * float(len(distances))
        idx = np.maximum(1, np.ceil(distances[finite] / self.width - _BUCKET_SLACK)).astype(np.int64)
        values, counts = np.unique(idx, return_counts=True)
        for i, c in zip(values.tolist(), counts.tolist()):
            self.buckets[i] = self.buckets.get(i, 0.0) + weight * c
        while len(self.buckets) > self.max_buckets:
            self._coarsen()

    def _coarsen(self) -> None:
        merged: dict[int, float] = {}
        for i, w in self.buckets.items():
            j = (i + 1) // 2
            merged[j] = merged.get(j, 0.0) + w
        self.buckets = merged
        self.width *= 2

    def curve(self, grid: Sequence[float] | np.ndarray, *, references: int, adjust: bool) -> Curve:
        """Hit ratio per capacity; with `adjust`, SHARDS-adj puts the gap between the true
        reference count and the sampled weight into the first bucket."""
        caps = check_grid(grid)
        if references <= 0 or self.sampled <= 0:
            return make_curve(caps, np.zeros(len(caps)))
        idx = np.fromiter(self.buckets.keys(), dtype=np.float64, count=len(self.buckets))
        w = np.fromiter(self.buckets.values(), dtype=np.float64, count=len(self.buckets))
        if adjust:
            idx = np.r_[1.0, idx]
            w = np.r_[references - self.sampled, w]
            total = float(references)
        else:
            total = self.sampled
        return make_curve(caps, hit_ratios(idx * self.width, caps, weights=w, total=total))


class ShardsMRC:
    """Online LRU hit-rate curve estimator (SHARDS), block-level and prefix-level.

    Call `access_request(keys, sizes)` once per request (a prefix chain of chunk keys) or
    `access(key, size)` for a lone reference; `curve(grid)` / `prefix_curve(grid)` at any time.
    Cost per reference: one xxh3 hash and, for the sampled fraction R, O(log n) Python work;
    nothing blocks, so it can run on the request path or drain a queue in the background.
    Not thread-safe: call it from one thread or one event loop.

    `unit="blocks"` measures capacity in keys (every key weighs 1); `unit="bytes"` in bytes
    (weights are the sizes). Rate 1.0 tracks every key: the exact Mattson algorithm online.
    """

    def __init__(self, rate: float = 0.01, *, max_keys: int | None = None, unit: str = "blocks", adjust: bool = True,
                 bucket_width: float | None = None, max_buckets: int = 1 << 15) -> None:
        if unit not in UNITS:
            raise InvalidArgumentError(f"unit {unit!r}: use 'blocks' or 'bytes'")
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1):
            raise InvalidArgumentError(f"max_keys {max_keys!r}: use a positive integer, e.g. 8192")
        if bucket_width is not None and not (bucket_width > 0 and math.isfinite(bucket_width)):
            raise InvalidArgumentError(f"bucket_width {bucket_width!r}: use a positive number")
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 2:
            raise InvalidArgumentError(f"max_buckets {max_buckets!r}: use an integer >= 2")
        self._threshold = sampling_threshold(rate)
        self._max_keys = max_keys
        self._bytes = unit == "bytes"
        self._adjust = adjust
        self._tree = _RecencyTree()
        self._heap: list[tuple[int, int, Hashable]] = []  # (-hash, seq, key) of tracked keys
        self._seq = 0
        width = bucket_width if bucket_width is not None else (0.0 if self._bytes else 1.0)
        self._blocks = _Histogram(width=width, max_buckets=max_buckets)
        self._prefix = _Histogram(width=width, max_buckets=max_buckets)
        self._references = 0
        self._sampled_references = 0

    @classmethod
    def fixed_rate(cls, rate: float, **kwargs: Any) -> ShardsMRC:
        """Sample keys at a constant rate; memory about rate * distinct keys."""
        return cls(rate, **kwargs)

    @classmethod
    def fixed_size(cls, max_keys: int, *, initial_rate: float = 1.0, **kwargs: Any) -> ShardsMRC:
        """Track at most `max_keys` keys, lowering the rate as more distinct keys show up."""
        return cls(initial_rate, max_keys=max_keys, **kwargs)

    @property
    def rate(self) -> float:
        """The current sampling rate R = T / P."""
        return self._threshold / HASH_MODULUS

    @property
    def references(self) -> int:
        return self._references

    @property
    def sampled_references(self) -> int:
        return self._sampled_references

    @property
    def tracked_keys(self) -> int:
        return len(self._tree)

    def access(self, key: Any, size: int = 1) -> float | None:
        """Record one reference as a one-chunk request; return its scaled distance (inf for
        a first reference), or None when the key is not sampled."""
        return self.access_request([key], [size])[0]

    def access_request(self, keys: Sequence[Any], sizes: Sequence[int] | int | None = None) -> list[float | None]:
        """Record a request's chunk references in prefix order; return their scaled distances
        (None for keys not sampled). Bad keys or sizes raise before anything is recorded."""
        n = len(keys)
        if sizes is None:
            sizes = [1] * n
        elif isinstance(sizes, int) and not isinstance(sizes, bool):
            sizes = [sizes] * n
        if len(sizes) != n:
            raise InvalidArgumentError(f"{len(sizes)} sizes for {n} keys: pass one size per key")
        for size in sizes:
            if type(size) is not int or size < 0:
                if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0:
                    continue
                raise InvalidArgumentError(f"size {size!r}: use a non-negative integer number of bytes")
        out: list[float | None] = [None] * n
        self._references += n
        self._sample(keys, _hashes(keys), sizes, range(n), out)
        return out

    def access_request_hashed(self, keys: Sequence[bytes], hashes: np.ndarray, size: int) -> None:
        """`access_request` for keys that are already uniform hashes (tierd chunk keys are
        blake2b outputs): `hashes` holds one value in [0, 2**32) per key, e.g. the keys' first
        four bytes. Only the sampled keys cost Python work, so a 512-chunk request costs a few
        microseconds at rate 0.01."""
        n = len(keys)
        if len(hashes) != n:
            raise InvalidArgumentError(f"{len(hashes)} hashes for {n} keys: pass one hash per key")
        sampled = np.flatnonzero(hashes < self._threshold)
        self._references += n
        self._sample(keys, hashes, [size] * n if len(sampled) else (), sampled, None)

    def _sample(self, keys: Sequence[Any], hashes: Sequence[int], sizes: Sequence[int], indexes: Iterable[int],
                out: list[float | None] | None) -> None:
        """Record the sampled references among `indexes`; their distances go to `out` if given."""
        threshold = self._threshold
        run_max = 0.0
        for i in indexes:
            h = int(hashes[i])  # a Python int: numpy unsigned hashes would wrap when negated for the heap
            if h >= threshold:
                continue
            key = keys[i]
            if isinstance(key, (bytearray, memoryview)):
                key = bytes(key)
            size = int(sizes[i])
            inv_rate = HASH_MODULUS / threshold
            if self._bytes and self._blocks.width == 0.0:
                self._blocks.width = self._prefix.width = float(max(1, size))  # default bucket: first chunk's size
            raw = self._tree.touch(key, size if self._bytes else 1)
            if raw is None:
                dist = math.inf
                self._track_new(key, h)
                threshold = self._threshold  # fixed size may have lowered it mid-request
            else:
                dist = raw * inv_rate
            self._sampled_references += 1
            if dist > run_max:
                run_max = dist
            self._blocks.add(dist, inv_rate)
            self._prefix.add(run_max, inv_rate)
            if out is not None:
                out[i] = dist

    def _track_new(self, key: Hashable, h: int) -> None:
        if self._max_keys is None:
            return
        self._seq += 1
        heapq.heappush(self._heap, (-h, self._seq, key))
        while len(self._tree) > self._max_keys:
            top = -self._heap[0][0]
            while self._heap and -self._heap[0][0] == top:  # equal hashes leave together
                self._tree.drop(heapq.heappop(self._heap)[2])
            self._threshold = top

    def curve(self, grid: Sequence[float]) -> Curve:
        """Estimated block-level LRU hit ratio at each capacity (keys, or bytes in byte mode)."""
        return self._blocks.curve(grid, references=self._references, adjust=self._adjust)

    def prefix_curve(self, grid: Sequence[float]) -> Curve:
        """Estimated prefix-level hit ratio (leading present run / chunks) at each capacity."""
        return self._prefix.curve(grid, references=self._references, adjust=self._adjust)


# --------------------------------------------------------------------------- advice


@dataclass(slots=True, frozen=True)
class Recommendation:
    """Where the hit-rate curve stops paying: past `capacity` bytes, every further GiB adds
    less than `gain_per_gib` to the hit ratio (on the grid given). `flattened` is False when
    the curve still pays at the largest capacity of the grid: measure further out."""

    capacity: float
    hit_ratio: float
    gain_per_gib: float
    flattened: bool

    def to_dict(self) -> dict[str, Any]:
        return {"capacity_bytes": self.capacity, "hit_ratio": self.hit_ratio, "gain_per_gib": self.gain_per_gib,
                "flattened": self.flattened}


def recommend_capacity(curve: Curve, gain_per_gib: float) -> Recommendation:
    """The capacity beyond which one more GiB adds less than `gain_per_gib` to the hit ratio.

    `curve` has byte capacities. The answer is the end of the last grid segment whose slope
    is at least the threshold (the start of the grid if none is), so a plateau followed by a
    second rise (LRU curves have cliffs) is not mistaken for the end.
    """
    if isinstance(gain_per_gib, bool) or not isinstance(gain_per_gib, (int, float)) or not gain_per_gib > 0 \
            or not math.isfinite(gain_per_gib):
        raise InvalidArgumentError(f"gain per GiB {gain_per_gib!r}: use a positive fraction, e.g. 0.001 (0.1% per GiB)")
    points = sorted((float(c), float(h)) for c, h in curve)
    if not points:
        raise InvalidArgumentError("empty curve: evaluate the curve on at least one capacity")
    best = 0
    for i in range(1, len(points)):
        (c0, h0), (c1, h1) = points[i - 1], points[i]
        if c1 > c0 and (h1 - h0) / ((c1 - c0) / GiB) >= gain_per_gib:
            best = i
    flattened = best < len(points) - 1 or len(points) == 1
    return Recommendation(capacity=points[best][0], hit_ratio=points[best][1], gain_per_gib=float(gain_per_gib),
                          flattened=flattened)


# --------------------------------------------------------------------------- offline report


def analyze(requests: Iterable[Any], *, sample_rate: float, grid: Sequence[float] | None = None,
            fixed_size: int | None = None, block_bytes: int | None = None, gain_per_gib: float | None = None,
            tier_capacities: Sequence[tuple[str, int]] = ()) -> dict[str, Any]:
    """Everything `tierd mrc` reports for a trace, as one JSON-ready dict.

    Curves are block-level (capacity in blocks): `exact`, `shards` (fixed rate), their prefix
    forms `prefix_exact` / `prefix_shards`, and with `fixed_size` the fixed-size SHARDS pair.
    With `block_bytes`, the grid and the tiers are also given in bytes and a capacity is
    recommended from the exact curve. Tier capacities (bytes) are cumulative in the order
    given: with demotion on eviction, DRAM then NVMe behave like one LRU of their sum.
    """
    threshold = sampling_threshold(sample_rate)
    if tier_capacities and not block_bytes:
        raise InvalidArgumentError("tier capacities are bytes: give the bytes per block (--block-bytes) to place them")
    if gain_per_gib is not None and not block_bytes:
        raise InvalidArgumentError("a gain per GiB needs the bytes per block (--block-bytes) to turn blocks into GiB")
    refs = flatten_requests(requests)
    n = len(refs.sizes)
    if n == 0:
        raise InvalidArgumentError("the trace has no chunk references: check the file and its format")
    dist = stack_distances(refs.keys)
    prefix = running_max_by_request(dist, refs.request_index)
    distinct = int(np.count_nonzero(dist == COLD))
    caps = check_grid(grid if grid is not None else default_grid(distinct))
    report: dict[str, Any] = {
        "grid": [int(c) if c.is_integer() else c for c in caps.tolist()],
        "sample_rate": sample_rate,
        "effective_sample_rate": threshold / HASH_MODULUS,
        "requests": refs.requests,
        "references": n,
        "distinct": distinct,
        "max_hit_ratio": round(1.0 - distinct / n, 6),
        "exact": make_curve(caps, hit_ratios(dist, caps)),
        "prefix_exact": make_curve(caps, hit_ratios(prefix, caps)),
    }
    report["shards"], report["prefix_shards"] = shards_fixed_rate_curves(refs, caps, sample_rate)
    report["sampled_references"] = int(np.count_nonzero(shards_mask(refs.keys, sample_rate)))
    mae = {"shards": mean_abs_error(report["shards"], report["exact"]),
           "prefix_shards": mean_abs_error(report["prefix_shards"], report["prefix_exact"])}
    if fixed_size is not None:
        est = ShardsMRC.fixed_size(fixed_size)
        bounds = np.r_[0, np.cumsum(np.bincount(refs.request_index, minlength=refs.requests))]
        keys = refs.keys.tolist() if isinstance(refs.keys, np.ndarray) else refs.keys
        for r in range(refs.requests):
            est.access_request(keys[bounds[r]:bounds[r + 1]])
        report["fixed_size"] = fixed_size
        report["fixed_size_final_rate"] = est.rate
        report["shards_fixed_size"] = est.curve(caps)
        report["prefix_shards_fixed_size"] = est.prefix_curve(caps)
        mae["shards_fixed_size"] = mean_abs_error(report["shards_fixed_size"], report["exact"])
        mae["prefix_shards_fixed_size"] = mean_abs_error(report["prefix_shards_fixed_size"], report["prefix_exact"])
    report["mae_vs_exact"] = {k: round(v, 6) for k, v in mae.items()}
    if block_bytes:
        report["block_bytes"] = block_bytes
        report["grid_bytes"] = [int(c * block_bytes) for c in caps]
        tiers = []
        cumulative = 0
        for name, size in tier_capacities:
            cumulative += size
            blocks = cumulative // block_bytes
            tiers.append({"name": name, "bytes": size, "cumulative_bytes": cumulative, "cumulative_blocks": blocks,
                          "hit_ratio": round(float(hit_ratios(dist, [blocks])[0]), 6) if blocks > 0 else 0.0,
                          "prefix_hit_ratio": round(float(hit_ratios(prefix, [blocks])[0]), 6) if blocks > 0 else 0.0})
        report["tiers"] = tiers
        gain = 0.001 if gain_per_gib is None else gain_per_gib
        by_bytes = [[c * block_bytes, h] for c, h in report["exact"]]
        report["recommendation"] = recommend_capacity(by_bytes, gain).to_dict()
        report["recommendation"]["capacity_blocks"] = int(report["recommendation"]["capacity_bytes"] // block_bytes)
    return report
