"""What loading from each tier costs: calibrated at daemon start, refined from real transfers.

The daemon keeps one `TierCost` per tier (fixed latency + bandwidth). Start-up calibration
times a few reads per tier (DRAM: a copy out of the shared arena, as a client does it; NVMe: a
verified chunk-file read into an arena slot, as a promotion does it) within a small time budget.
Without calibration (`--no-calibrate`) the declared defaults below are used until real
promotions update them. Lookups that ask for a plan combine these with the engine's model
shape and measured prefill throughput (`tierd.costmodel.CostModel`).

A tier with a codec moves fewer bytes but must decode them, so its cost per raw byte is
1 / (medium bandwidth x ratio) + 1 / decode throughput. Calibration measures the medium with
raw bytes and the codec on a synthetic chunk (ratio and decode time), and combines the two;
real promotions (which include decoding) refine the result like any tier's.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tierd.calibrate import calibrate_tier
from tierd.costmodel import TierCost
from tierd.errors import TierdError
from tierd.layout import Layout
from tierd.tiers.encoding import TierCodec

if TYPE_CHECKING:
    from tierd.store import TieredStore
    from tierd.tiers.base import LowerTier

log = logging.getLogger(__name__)

#: Declared costs before any measurement: (bandwidth bytes/s, latency s). Order-of-magnitude
#: values for a shared-memory copy and a local NVMe read through the daemon.
DECLARED: dict[str, tuple[float, float]] = {"dram": (8e9, 20e-6), "nvme": (1.5e9, 300e-6), "object": (0.3e9, 20e-3)}
_CAL_LAYOUT = "ca1b"  # a layout id no real layout has (real ones are 16 hex digits)


def declared_costs(store: "TieredStore") -> dict[str, TierCost]:
    return {name: TierCost(name, *DECLARED.get(name, (1e9, 1e-3))) for name in store.tier_names}


def _blocking(tier: LowerTier, loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """Call a tier operation (a coroutine) by name from this (non-loop) thread: it runs on
    `loop`, the store's, as the store's own calls do (NVMe's on the tier's I/O threads), and is
    waited for."""
    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(getattr(tier, op)(*args, **kwargs), loop).result()

    return call


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


def calibrate_costs(store: "TieredStore", *, budget_s: float = 0.3,
                    loop: asyncio.AbstractEventLoop | None = None) -> dict[str, TierCost]:
    """Measure every tier (blocking: run it in a thread). Needs 4 MiB + 64 KiB of free arena.
    The lower tiers are measured through `loop`, the store's event loop (their operations are
    coroutines); without one they keep their declared costs until real promotions refine them."""
    costs = declared_costs(store)
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
