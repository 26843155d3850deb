"""Admission to the slower tiers: which chunks are worth writing to NVMe or the bucket at all.

Most chunks of a serving workload are used once: a prompt's unshared tail is stored, never read
again, and evicted. Writing it down costs SSD write endurance (or bucket requests and bytes) and
pushes a chunk that might be read out of the tier below.

- `AdmitAll` writes every chunk DRAM lets go (the old behaviour).
- `ReuseAdmission` admits a chunk when it has been used a second time: a hit while in DRAM, or
  its key coming back after an earlier copy was declined (the key is remembered in a bounded
  ghost list, as Dynamo KVBM's "written to disk only when used twice" and vLLM's reuse-frequency
  gate do). On the Mooncake traces most reuse comes *after* a chunk's first eviction, so this
  loses 0.04-0.09 of prefix hit ratio at the middle capacities.
- `AdaptiveAdmission` admits what `reuse` admits plus every chunk in the first `limit` chunks
  of its prompt, and picks `limit` online: small models of the tier below, fed a hashed sample
  of the keys, replay each candidate limit side by side, and the filter uses the one that
  writes least per hit among those that cost at most `loss` of hit ratio against admitting
  everything. Why depth: a prompt's chunks are only useful as a prefix, so declining the deep
  end keeps what is admitted usable, where declining chunks here and there (any per-key rule)
  breaks prefixes and loses far more hits than it saves writes. Why adaptive: the limit that is
  safe differs by workload and size (a fixed limit of 16 on the conversation trace, NVMe 4x
  DRAM: 0.49x the writes per hit of `all` and +0.006 hit ratio with DRAM 2,000 chunks, but
  -0.030 with 10,000).

The chunks' keys are chained (a key names its whole prefix), so `depth` is a property of the key.
"""
from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque
from typing import Callable, Hashable, Protocol


class Admission(Protocol):
    """May a chunk leaving DRAM be written to this tier?

    Called for every chunk leaving DRAM, in the order they leave. `hits`: times it was used
    since it was stored; `depth`: its index in its prompt (0 = the first chunk); `stored`: the
    tier already holds a copy, so nothing is written whatever the answer. Such calls only tell
    a filter that learns from the stream (`AdaptiveAdmission`) that the chunk left; they are
    not counted in `admitted` / `declined`. Deterministic, O(1) per call, bounded memory.
    """

    name: str
    admitted: int
    declined: int

    def admits(self, key: Hashable, hits: int, *, depth: int = 0, stored: bool = False) -> bool: ...


class AdmitAll:
    name = "all"

    def __init__(self) -> None:
        self.admitted = 0
        self.declined = 0

    def admits(self, key: Hashable, hits: int, *, depth: int = 0, stored: bool = False) -> bool:
        if not stored:
            self.admitted += 1
        return True


class _Ghosts:
    """The keys last declined, oldest forgotten first, at most `size`: a key found here was
    declined before and has come back, i.e. it is being used a second time."""

    __slots__ = ("size", "_keys")

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def take(self, key: Hashable) -> bool:
        """Whether `key` was here (it is forgotten: it is admitted now)."""
        if key in self._keys:
            del self._keys[key]
            return True
        return False

    def add(self, key: Hashable) -> None:
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)


def _reused(ghosts: _Ghosts, key: Hashable, hits: int, depth: int, limit: int | None) -> bool:
    """The depth-limited reuse rule: used in DRAM, coming back after a decline, or among the
    first `limit` chunks of its prompt (None: every chunk)."""
    return hits > 0 or limit is None or depth < limit or ghosts.take(key)


class ReuseAdmission:
    """Admit a chunk on its second use; remember up to `ghosts` declined keys (oldest forgotten
    first) so a chunk stored again after being declined counts as reused."""

    name = "reuse"

    def __init__(self, ghosts: int = 65536) -> None:
        if ghosts < 1:
            raise ValueError(f"ghosts={ghosts!r}: the ghost list must hold at least one key")
        self.ghosts = ghosts
        self._declined = _Ghosts(ghosts)
        self.admitted = 0
        self.declined = 0

    def admits(self, key: Hashable, hits: int, *, depth: int = 0, stored: bool = False) -> bool:
        """Whether a chunk leaving DRAM with `hits` hits since it was stored may be written down."""
        if stored:
            return True
        if _reused(self._declined, key, hits, depth, 0):
            self.admitted += 1
            return True
        self._declined.add(key)
        self.declined += 1
        return False


#: The depth limits `AdaptiveAdmission` chooses from (None: admit everything, as `all`).
LIMITS: tuple[int | None, ...] = (0, 2, 4, 8, 16, 32, 64, 128, None)
#: The half-lives of the counts `AdaptiveAdmission` chooses by, in model capacities of sampled
#: departures. A limit must be safe over both: the short one follows a workload that changes,
#: the long one keeps a lull in reuse from passing for a lasting one (with the short one alone,
#: the agentic trace of seed 1 lost 0.012 at DRAM 250).
HALF_LIVES: tuple[int, ...] = (4, 32)
#: Keys a model of the tier holds by default (the sample rate is this over the tier's capacity).
MODEL_KEYS = 4096


def _key_hash(key: Hashable) -> int:
    """A 32-bit hash of `key` that is the same in every process (`hash()` of bytes is salted):
    CRC-32 of byte keys (the store's), a multiplicative mix of integer ids (the traces')."""
    if isinstance(key, int):
        return ((key * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF) >> 32
    if isinstance(key, (bytes, bytearray)):
        return zlib.crc32(key)
    return zlib.crc32(repr(key).encode())


class _ShadowTier:
    """The tier below as it would be under one depth limit, for the sampled keys only: an LRU of
    `capacity` keys (the tier's capacity times the sample rate; spatial sampling scales a cache
    down with its key stream, as SHARDS does for hit-ratio curves), its own ghost list, and the
    hits and writes it would have had.

    A departure of a key is seen one DRAM stay after the reference that found the key in the
    tier or not. So a key that left this model within that time still counts as present: the
    model holds, beyond its capacity, as many keys as it wrote in the last `delay` departures.
    """

    __slots__ = ("limit", "capacity", "hits", "writes", "_keys", "_ghosts", "_recent", "_late")

    def __init__(self, limit: int | None, capacity: int, ghosts: int, delay: int) -> None:
        self.limit = limit
        self.capacity = capacity
        #: hits and writes, counted over each of `HALF_LIVES`
        self.hits = [0.0] * len(HALF_LIVES)
        self.writes = [0.0] * len(HALF_LIVES)
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._ghosts = _Ghosts(ghosts)
        self._recent: deque[int] = deque([0] * delay)
        self._late = 0  # writes among the last `delay` departures

    def leave(self, key: Hashable, hits: int, depth: int) -> None:
        """A sampled key left DRAM: a hit here if this tier held it, else a write or a decline."""
        wrote = 0
        if key in self._keys:
            self._keys.move_to_end(key)
            self.hits = [n + 1 for n in self.hits]
        elif _reused(self._ghosts, key, hits, depth, self.limit):
            self._keys[key] = None
            self.writes = [n + 1 for n in self.writes]
            wrote = 1
        else:
            self._ghosts.add(key)
        if self._recent:
            self._recent.append(wrote)
            self._late += wrote - self._recent.popleft()
        while len(self._keys) > self.capacity + self._late:
            self._keys.popitem(last=False)

    def full(self) -> bool:
        return len(self._keys) >= self.capacity

    def scale(self, which: int, factor: float) -> None:
        self.hits[which] *= factor
        self.writes[which] *= factor


class AdaptiveAdmission:
    """`reuse` plus the first `limit` chunks of every prompt, `limit` chosen online.

    Every departure of a sampled key (a fixed hash below `sample`) is replayed through one
    `_ShadowTier` per limit in `LIMITS`. Once the model that admits everything is full (before
    that, declining can only lose hits and no comparison is fair), every `epoch` sampled
    departures the filter takes the limit whose model wrote least per hit among those that,
    over each of `HALF_LIVES`, lost at most `loss` of the references (plus one standard error)
    against admitting everything. Until then, and for as long as no departure of an already
    stored chunk was ever reported (`stored=True`: without them the models never see a written
    chunk come back), it admits everything, which is always safe.

    The models count block hits; a declined chunk also costs the prefix hits after it, which is
    why `loss` defaults to half of the 0.01 the issue allows (measured worst, NVMe 4x DRAM, over
    the Mooncake traces and five agentic seeds: -0.0075).

    `capacity`: the tier's capacity in chunks; `upper`: DRAM's (default a quarter of it), the
    delay with which a reuse is seen; `ghosts`: declined keys remembered (default 4 x
    `capacity`: with 1 x, `reuse` loses 0.025 more at conversation DRAM 2,000); `sample`: the
    share of keys the models see (default `MODEL_KEYS` / `capacity`, at most 1). Memory:
    `ghosts` + len(LIMITS) x `sample` x (5 x `capacity` + `upper`) keys with the defaults.
    """

    name = "adaptive"

    def __init__(self, capacity: int = 65536, upper: int | None = None, *, sample: float | None = None,
                 loss: float = 0.005, ghosts: int | None = None, epoch: int = 256) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity={capacity!r}: use a whole number of chunks, at least 1")
        upper = capacity // 4 if upper is None else upper
        ghosts = 4 * capacity if ghosts is None else ghosts
        sample = min(1.0, MODEL_KEYS / capacity) if sample is None else sample
        for what, value, low in (("upper", upper, 0), ("ghosts", ghosts, 1), ("epoch", epoch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{what}={value!r}: use a whole number, at least {low}")
        if not 0 < sample <= 1:
            raise ValueError(f"sample={sample!r}: use a fraction of the keys in (0, 1]")
        if not 0 <= loss < 1:
            raise ValueError(f"loss={loss!r}: use a fraction of the references in [0, 1)")
        self.capacity, self.upper, self.sample, self.loss, self.epoch = capacity, upper, sample, loss, epoch
        self._sample_below = int(sample * (1 << 32))
        small = max(1, round(capacity * sample))
        self._models = [_ShadowTier(limit, small, max(1, round(ghosts * sample)), round(upper * sample))
                        for limit in LIMITS]
        self._ghosts = _Ghosts(ghosts)
        self._level = len(LIMITS) - 1
        self._half_lives = [n * small for n in HALF_LIVES]
        self._warm = False
        self._told_stored = False
        self._seen = 0
        self._refs = [0.0] * len(HALF_LIVES)
        self._dram_hits = [0.0] * len(HALF_LIVES)
        self.admitted = 0
        self.declined = 0

    @property
    def limit(self) -> int | None:
        """The depth limit in use: chunks this deep or deeper are admitted only when reused
        (None: every chunk is)."""
        return LIMITS[self._level]

    def admits(self, key: Hashable, hits: int, *, depth: int = 0, stored: bool = False) -> bool:
        if _key_hash(key) < self._sample_below:
            self._observe(key, hits, depth, stored)
        if stored:
            return True
        if _reused(self._ghosts, key, hits, depth, self.limit):
            self.admitted += 1
            return True
        self._ghosts.add(key)
        self.declined += 1
        return False

    def _observe(self, key: Hashable, hits: int, depth: int, stored: bool) -> None:
        for model in self._models:
            model.leave(key, hits, depth)
        self._told_stored = self._told_stored or stored
        if not self._warm:
            if not self._models[-1].full():
                return
            self._warm = True
            for model in self._models:
                for which in range(len(HALF_LIVES)):
                    model.scale(which, 0.0)
        self._seen += 1
        for which, half_life in enumerate(self._half_lives):
            self._refs[which] += 1 + hits
            self._dram_hits[which] += hits
            if self._seen % half_life == 0:
                self._refs[which] *= 0.5
                self._dram_hits[which] *= 0.5
                for model in self._models:
                    model.scale(which, 0.5)
        if self._seen % self.epoch == 0:
            self._choose()

    def _choose(self) -> None:
        """The limit whose model wrote least per hit (over the short half-life) among those
        that lost at most `loss` of the references, plus one standard error, over every one."""
        everything = self._models[-1]
        best = len(LIMITS) - 1
        if self._told_stored:
            best_cost = self._cost(everything)
            for level, model in enumerate(self._models[:-1]):
                if self._safe(model, everything) and self._cost(model) < best_cost:
                    best, best_cost = level, self._cost(model)
        self._level = best

    def _safe(self, model: _ShadowTier, everything: _ShadowTier) -> bool:
        for which, refs in enumerate(self._refs):
            lost = everything.hits[which] - model.hits[which]
            if lost + math.sqrt(abs(lost) + 1) > self.loss * refs:
                return False
        return True

    def _cost(self, model: _ShadowTier) -> float:
        return model.writes[0] / (self._dram_hits[0] + model.hits[0] + 1)


#: name -> admission filter factory (`--nvme-admission`, `--object-admission`, the simulator).
ADMISSIONS: dict[str, Callable[[], Admission]] = {
    "all": AdmitAll, "reuse": ReuseAdmission, "adaptive": AdaptiveAdmission}


def make_admission(name: str, capacity: int | None = None, upper: int | None = None) -> Admission:
    """The filter `name` of `ADMISSIONS`, sized for a tier of `capacity` chunks under a DRAM of
    `upper` chunks where it takes sizes (`adaptive`); the others ignore them."""
    if name not in ADMISSIONS:
        raise ValueError(f"admission filter {name!r}: use one of {', '.join(ADMISSIONS)}")
    if name == "adaptive" and capacity is not None:
        return AdaptiveAdmission(capacity, upper)
    return ADMISSIONS[name]()
