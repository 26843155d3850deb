"""Start-up calibration: measure each tier's read latency and bandwidth in well under a second.

The cost model needs a tier's (latency, bandwidth) before the first real transfer has been
seen; declared values (`cost.tiers.DECLARED`) are guesses, a measurement on this machine is
not. A read of n bytes takes latency + n / bandwidth, so two sizes suffice: a small one (64 KiB,
dominated by latency) and a large one (4 MiB, dominated by bandwidth). Each is timed a few times
and the fastest time kept (interference from other work only ever adds time), then the line
through the two points gives both parameters. `TierCost.observe` refines them online afterwards.

What is timed is the read — the load direction the cost model predicts (DRAM: a copy out of
the shared arena, as a client does it; NVMe: a verified chunk-file read into an arena slot, as a
promotion does it). The write that puts the bytes in place first is not timed. All of it
blocks; the daemon runs it in a worker thread, never on its event loop.

A tier with a codec moves fewer bytes but must decode them, so its cost per raw byte is
1 / (medium bandwidth x ratio) + 1 / decode throughput. Calibration measures the medium with
raw bytes and the codec on a synthetic chunk (ratio and decode time), and combines the two;
real promotions (which include decoding) refine the result like any tier's.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from tierd.cost.tiers import TierCost, declared_costs
from tierd.errors import InvalidArgumentError, TierdError
from tierd.layout import Layout
from tierd.tiers.encoding import TierCodec

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * 1024

#: Write `buf` (a memoryview of the calibration bytes) where `read_fn` will find it.
WriteFn = Callable[[memoryview], Any]
#: Read back `nbytes` of what was last written (blocking; the return value is ignored).
ReadFn = Callable[[int], Any]


def calibrate_tier(
    write_fn: WriteFn,
    read_fn: ReadFn,
    sizes: tuple[int, int] = (64 * KiB, 4 * MiB),
    repeats: int = 5,
    *,
    name: str = "tier",
    budget_s: float = 0.5,
    clock: Callable[[], float] = time.perf_counter,
) -> TierCost:
    """Measure a tier's read latency and bandwidth; returns a `TierCost` seeded with them.

    For each of the two `sizes` (small first), writes random bytes with `write_fn` and times up
    to `repeats` reads with `read_fn`, keeping the minimum. Rounds alternate the sizes and stop
    once `budget_s` of reading is spent, after at least one timed read of each size — so the
    total is about budget_s plus one write and one read of each size (a tier too slow for that
    still gets its one measurement per size). Fit, from the minima (s1, t1) and (s2, t2):

        seconds_per_byte = (t2 − t1) / (s2 − s1),  latency = t1 − s1 · seconds_per_byte

    Noise can bend that line: if the large read was not slower per byte than the small one
    would allow (slope <= 0) the bandwidth is taken as s2 / t2 and the latency as what is left
    of t1; a negative latency is clamped to 0 with the line through the origin and (s2, t2).
    """
    s1, s2 = _check_sizes(sizes)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"calibration repeats {repeats!r}: must be an integer >= 1")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise InvalidArgumentError(f"calibration budget_s {budget_s!r}: must be a positive number of seconds")

    data = np.random.default_rng(0x7_1E_2D).integers(0, 256, s2, dtype=np.uint8)  # incompressible
    best = {s1: math.inf, s2: math.inf}
    spent = 0.0
    for s in (s1, s2):
        write_fn(memoryview(data[:s]).cast("B"))
        t0 = clock()
        read_fn(s)  # warm-up: first touch, page cache, connection set-up
        spent += clock() - t0
    for round_ in range(repeats):
        for s in (s1, s2):
            write_fn(memoryview(data[:s]).cast("B"))
            t0 = clock()
            read_fn(s)
            elapsed = clock() - t0
            spent += elapsed
            best[s] = min(best[s], elapsed)
        if spent >= budget_s:
            break

    t1, t2 = best[s1], best[s2]
    bandwidth, latency = solve_line(s1, t1, s2, t2)
    log.info("calibrated tier %s: %.3g B/s, latency %.3g s (min of %d rounds: %d B in %.3g s, %d B in %.3g s)",
             name, bandwidth, latency, round_ + 1, s1, t1, s2, t2)
    return TierCost(name, bandwidth, latency)


def solve_line(s1: int, t1: float, s2: int, t2: float) -> tuple[float, float]:
    """(bandwidth B/s, latency s) of the line through (s1, t1) and (s2, t2), s1 < s2, kept physical."""
    tiny = 1e-9  # a read that timed at 0 s (clock resolution) counts as 1 ns
    t1, t2 = max(t1, tiny), max(t2, tiny)
    slope = (t2 - t1) / (s2 - s1)
    if slope <= 0:  # large read not slower than the small one: noise or caching; bound from the large one
        bandwidth = s2 / t2
        return bandwidth, max(0.0, t1 - s1 / bandwidth)
    latency = t1 - s1 * slope
    if latency < 0:
        return s2 / t2, 0.0
    return 1.0 / slope, latency


def _check_sizes(sizes: Any) -> tuple[int, int]:
    try:
        s1, s2 = sizes
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"calibration sizes {sizes!r}: give two byte sizes, small then large") from None
    for s in (s1, s2):
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
            raise InvalidArgumentError(f"calibration size {s!r}: must be a positive number of bytes")
    if s1 >= s2:
        raise InvalidArgumentError(
            f"calibration sizes {sizes!r}: the first must be smaller than the second (e.g. 64 KiB and 4 MiB)"
        )
    return s1, s2


# --------------------------------------------------------------------------------------------
# A tier with a codec


#: The chunk a codec is measured on at start: bf16, 4 layers x 8 KV heads x 128 x 256 tokens (4 MiB).
CODEC_CAL_LAYOUT = Layout("tierd-codec-calibration", "bfloat16", 4, 8, 128, chunk_tokens=256)


def codec_speed(codec: TierCodec, repeats: int = 2) -> tuple[float, float]:
    """(ratio, decode bytes/s) of the tier's codec on a synthetic chunk (fastest of `repeats`)."""
    from tierd.codecs.sample import synthetic_kv  # torch: imported only when a tier has a codec

    assert codec.codec is not None
    layout = CODEC_CAL_LAYOUT
    payload = synthetic_kv(layout)
    blob = codec.codec.encode(payload, layout)
    out = memoryview(bytearray(layout.chunk_bytes))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        codec.codec.decode(blob, layout, out)
        best = min(best, time.perf_counter() - t0)
    return layout.chunk_bytes / len(blob), layout.chunk_bytes / max(best, 1e-9)


def with_codec(medium: TierCost, codec: TierCodec, speed: tuple[float, float] | None = None) -> TierCost:
    """The cost per raw byte of a tier whose medium costs `medium` and which stores `codec` blobs
    (`speed`: the codec's (ratio, decode bytes/s), measured now if not given)."""
    ratio, decode_bw = speed if speed is not None else codec_speed(codec)
    seconds_per_byte = 1.0 / (medium.bandwidth * ratio) + 1.0 / decode_bw
    log.info("tier %s: codec %s, ratio %.2f, decode %.2f GB/s: %.2f GB/s effective (medium %.2f GB/s)",
             medium.name, codec.spec, ratio, decode_bw / 1e9, 1e-9 / seconds_per_byte, medium.bandwidth / 1e9)
    return TierCost(medium.name, 1.0 / seconds_per_byte, medium.latency)


# --------------------------------------------------------------------------------------------
# Every tier of a store


_CAL_LAYOUT = "ca1b"  # a layout id no real layout has (real ones are 16 hex digits)


class CalibrationTarget(Protocol):
    """What `calibrate_costs` uses of a store, passed in by the daemon's start-up (which gives a
    view with a scratch arena of its own): the tiers, their names, and an arena to time with."""

    tier_names: Sequence[str]
    lower: Sequence[Any]  # each with .tier (the medium) and .shared (the object tier)
    alloc: Any  # alloc(nbytes) -> offset | None, free(offset, nbytes)
    arena: Any  # view(offset, nbytes) -> memoryview


def _blocking(tier: Any, loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """Call a tier operation (a coroutine) by name from this (non-loop) thread: it runs on
    `loop`, the store's, as the store's own calls do (NVMe's on the tier's I/O threads), and is
    waited for."""
    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(getattr(tier, op)(*args, **kwargs), loop).result()

    return call


def calibrate_costs(store: CalibrationTarget, *, budget_s: float = 0.3,
                    loop: asyncio.AbstractEventLoop | None = None) -> dict[str, TierCost]:
    """Measure every tier (blocking: run it in a thread). Needs 4 MiB + 64 KiB of free arena.
    The lower tiers are measured through `loop`, the store's event loop (their operations are
    coroutines); without one they keep their declared costs until real promotions refine them."""
    costs = declared_costs(store.tier_names)
    size = 4 << 20
    slot = store.alloc.alloc(size)
    if slot is None:
        log.warning("no free arena space to calibrate; using declared tier costs")
        return costs
    try:
        arena = store.arena.view(slot, size)
        scratch = np.empty(size, dtype=np.uint8)
        src = np.frombuffer(arena, dtype=np.uint8)

        def dram_write(buf: memoryview) -> None:
            src[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)

        costs["dram"] = calibrate_tier(dram_write, lambda n: np.copyto(scratch[:n], src[:n]), name="dram",
                                       budget_s=budget_s)
        for lower in store.lower:
            tier = lower.tier
            if loop is None:
                continue
            # one key per size (a chunk's key names its content); on the shared object tier each
            # node calibrates on keys of its own
            node = getattr(tier, "node", "") if lower.shared else ""
            keys: dict[int, bytes] = {}

            def key_for(n: int, node: str = node, keys: dict[int, bytes] = keys) -> bytes:
                if n not in keys:
                    keys[n] = hashlib.blake2b(f"tierd-calibration:{node}:{n}".encode(), digest_size=16).digest()
                return keys[n]

            call = _blocking(tier, loop)

            def write(buf: memoryview, call=call, key_for=key_for) -> None:
                call("write", key_for(len(buf)), _CAL_LAYOUT, "tierd-calibration", buf)

            def read(n: int, call=call, key_for=key_for, name=tier.name) -> None:
                if not call("read_into", key_for(n), arena[:n], layout_id=_CAL_LAYOUT, payload_len=n):
                    raise OSError(f"calibration chunk on {name} did not read back")

            try:
                costs[tier.name] = calibrate_tier(write, read, name=tier.name, budget_s=budget_s)
                codec = getattr(tier, "codec", None)
                if isinstance(codec, TierCodec) and codec.codec is not None:
                    costs[tier.name] = with_codec(costs[tier.name], codec)
            except (OSError, TierdError) as exc:
                log.warning("calibrating %s failed (%s); using declared costs", tier.name, exc)
            finally:
                for key in keys.values():
                    try:
                        call("delete", key)
                    except (OSError, TierdError):
                        pass
    finally:
        store.alloc.free(slot, size)
    for cost in costs.values():
        log.info("tier %s: %.2f GB/s, %.0f us latency", cost.name, cost.bandwidth / 1e9, cost.latency * 1e6)
    return costs
