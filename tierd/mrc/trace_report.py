"""Everything `tierd mrc --trace` reports for a trace: exact curves beside their SHARDS
estimates, their errors, and with the bytes per block, each tier's hit ratio and the advice.

With `opt`, Belady's MIN curve (`tierd.mrc.belady`) is added: the best any eviction policy
could do on this trace. With `policies`, each named policy of `tierd.policies` is replayed
through `tierd.mrc.simulate` at up to `policy_points` capacities of the grid (a simulation is one
pass over the trace per capacity and policy, so the full 40-point grid would take minutes on a
Mooncake trace): what an operator would get by switching `--dram-policy`.

The live report (curves of a running daemon) is `observer.AccessObserver.report`; both
come out in the shape `tierd.cli.mrc` prints.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from tierd.errors import InvalidArgumentError
from tierd.mrc.advice import recommend_blocks
from tierd.mrc.belady import opt_curves
from tierd.mrc.curve import check_grid, default_grid, hit_ratios, make_curve, mean_abs_error
from tierd.mrc.exact import COLD, running_max_by_request, stack_distances
from tierd.mrc.references import References, flatten_requests
from tierd.mrc.sampling import HASH_MODULUS, sampling_threshold, shards_mask
from tierd.mrc.shards import ShardsMRC, shards_fixed_rate_curves
from tierd.mrc.simulate import simulate
from tierd.policies import make_policy

#: Capacities each policy is simulated at by default (evenly picked from the grid).
DEFAULT_POLICY_POINTS = 10


def analyze(requests: Iterable[Any], *, sample_rate: float, grid: Sequence[float] | None = None,
            fixed_size: int | None = None, block_bytes: int | None = None, gain_per_gib: float | None = None,
            tier_capacities: Sequence[tuple[str, int]] = (), opt: bool = False, policies: Sequence[str] = (),
            policy_points: int = DEFAULT_POLICY_POINTS) -> dict[str, Any]:
    """Everything `tierd mrc` reports for a trace, as one JSON-ready dict.

    Curves are block-level (capacity in blocks): `exact`, `shards` (fixed rate), their prefix
    forms `prefix_exact` / `prefix_shards`, and with `fixed_size` the fixed-size SHARDS pair.
    With `block_bytes`, the grid and the tiers are also given in bytes and a capacity is
    recommended from the exact curve. Tier capacities (bytes) are cumulative in the order
    given: with demotion on eviction, DRAM then NVMe behave like one LRU of their sum.

    `opt` adds `opt` (MIN's prefix-level curve, comparable with `prefix_exact`) and `opt_block`
    (its block-level curve, an upper bound for every policy at either level) on the whole grid;
    `policies` adds `policies: {name: prefix-level curve}` on `policy_grid`, at most
    `policy_points` capacities of the grid. Both need whole-block capacities.
    """
    for name in policies:
        make_policy(name)  # an unknown name fails before the trace is read
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
        for keys in split_requests(refs):
            est.access_request(keys)
        report["fixed_size"] = fixed_size
        report["fixed_size_final_rate"] = est.rate
        report["shards_fixed_size"] = est.curve(caps)
        report["prefix_shards_fixed_size"] = est.prefix_curve(caps)
        mae["shards_fixed_size"] = mean_abs_error(report["shards_fixed_size"], report["exact"])
        mae["prefix_shards_fixed_size"] = mean_abs_error(report["prefix_shards_fixed_size"], report["prefix_exact"])
    report["mae_vs_exact"] = {k: round(v, 6) for k, v in mae.items()}
    if opt or policies:
        _whole_blocks(caps)
    if opt:
        report["opt_block"], report["opt"] = opt_curves(refs, caps)
    if policies:
        report["policy_grid"], report["policies"] = policy_curves(refs, thin_grid(caps, policy_points), policies)
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
        report["recommendation"] = recommend_blocks(report["exact"], block_bytes, gain)
    return report


def thin_grid(caps: Sequence[float] | np.ndarray, points: int) -> list[int]:
    """At most `points` capacities of `caps`, evenly spread, always the first and the last."""
    if points < 1:
        raise InvalidArgumentError(f"policy points {points!r}: simulate at one capacity or more")
    whole = [int(c) for c in caps]
    if len(whole) <= points:
        return whole
    picks = np.unique(np.round(np.linspace(0, len(whole) - 1, points)).astype(int))
    return [whole[i] for i in picks]


def policy_curves(refs: References, caps: Sequence[int], names: Sequence[str]) -> tuple[list[int], dict[str, Any]]:
    """(capacities, {policy name: prefix-level curve}) from replaying the trace through each policy."""
    requests = split_requests(refs)
    curves = {}
    for name in names:
        ratios = [simulate(requests, make_policy(name), int(c)).prefix_hit_ratio for c in caps]
        curves[name] = make_curve(caps, ratios)
    return list(caps), curves


def split_requests(refs: References) -> list[list[Any]]:
    """The per-request key lists of a flattened trace (the simulator's input)."""
    keys = refs.keys.tolist() if isinstance(refs.keys, np.ndarray) else list(refs.keys)
    bounds = np.r_[0, np.cumsum(np.bincount(refs.request_index, minlength=refs.requests))].tolist()
    return [keys[bounds[r]:bounds[r + 1]] for r in range(refs.requests)]


def _whole_blocks(caps: np.ndarray) -> None:
    if not all(float(c).is_integer() for c in caps):
        raise InvalidArgumentError(f"grid {caps.tolist()!r}: the optimum and the policies are simulated in whole blocks; "
                                   "use whole numbers of blocks")
