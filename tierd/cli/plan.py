"""`tierd plan` and `tierd explain`: is loading a cached prefix cheaper than recomputing it?

`plan` takes a model shape (flags or a Hugging Face config.json), a prompt length and tier
costs — declared with `--tier NAME=BANDWIDTH,LATENCY` for offline use, or the live daemon's
calibrated ones (`--socket`) — and prints, per tier: the predicted load time of the prompt's
whole cacheable prefix, the break-even prefix length, the smallest chunk position the
admission rule lets into the tier, and the decision if the prefix sat in that tier. With
`--hit dram:4,nvme:8` it also plans a hit spread over tiers, as a lookup would.

`explain KEY...` asks the daemon where those chunks are and what it would plan for them.

JSON contract (`plan --json`): one object with `model`, `dtype`, `kv_bytes_per_token`,
`prompt_tokens`, `chunk_tokens`, `chunk_bytes`, `full_chunks`, `device`, `recompute_s`,
`tiers` (a list of {name, bandwidth_bytes_per_s, latency_s, load_prefix_s, break_even_tokens,
min_admit_position, plan}) and `hit_plan` (a `Plan.to_dict()` or null).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from tierd.cli.common import add_client_args, parse_key, print_json, print_table
from tierd.cost.device import DeviceThroughput
from tierd.cost.plan import CostModel
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.errors import ConfigError, TierdError
from tierd.layout import DTYPE_SIZES
from tierd.sizes import format_size, parse_size

_SHAPE_FLAGS = {  # flag dest -> (flag, ModelShape field, required)
    "layers": ("--layers", "num_layers", True),
    "hidden": ("--hidden", "hidden_size", True),
    "heads": ("--heads", "num_attention_heads", True),
    "kv_heads": ("--kv-heads", "num_kv_heads", False),
    "head_dim": ("--head-dim", "head_dim", False),
    "intermediate": ("--intermediate", "intermediate_size", True),
    "vocab": ("--vocab", "vocab_size", True),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="load or recompute? predicted load time per tier, prefill time, break-even and decision",
        description="Predict, for a model and prompt length, the load time of the cached prefix from each "
                    "tier, the prefill (recompute) time, the break-even prefix length per tier and the "
                    "decision. Tier costs come from --tier (offline) or the live daemon (--socket).",
    )
    p.add_argument("--model-config", default=None, metavar="CONFIG_JSON", help="a Hugging Face config.json (Llama-style)")
    for dest, (flag, field_name, required) in _SHAPE_FLAGS.items():
        p.add_argument(flag, dest=dest, default=None, metavar="N",
                       help=f"model {field_name}" + ("" if required else " (default: from the other flags)"))
    p.add_argument("--prompt-tokens", required=True, metavar="N", help="prompt length in tokens")
    p.add_argument("--chunk-tokens", default="256", metavar="N", help="tokens per stored chunk (default 256)")
    p.add_argument("--dtype", default="bfloat16", help=f"KV dtype: {', '.join(sorted(DTYPE_SIZES))} (default bfloat16)")
    p.add_argument("--device-flops", default=None, metavar="FLOP/S",
                   help="sustained prefill throughput, e.g. 3e14 or 300T (offline mode needs it)")
    p.add_argument("--device-overhead", default="0", metavar="DURATION",
                   help="fixed time per prefill, e.g. 5ms (default 0)")
    p.add_argument("--tier", action="append", default=[], metavar="NAME=BANDWIDTH,LATENCY",
                   help="a tier's cost, e.g. dram=10GB/s,20us or s3=200MB/s,30ms; repeatable (offline mode)")
    p.add_argument("--hit", default=None, metavar="TIER:CHUNKS,...",
                   help="also plan a hit spread over tiers: leading chunks per tier in order, e.g. dram:4,nvme:8")
    add_client_args(p)
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "explain",
        help="where the chunks of KEY... are and what the cost model would plan for them (needs a daemon)",
        description="Look up chunk keys on the live daemon (in prefix order) and print the cost model's plan "
                    "for them: which chunks to load from which tier and where recompute starts.",
    )
    e.add_argument("keys", nargs="+", metavar="KEY", help="chunk keys in prefix order, as 32 hex digits (see `tierd ls`)")
    e.add_argument("--prompt-tokens", default=None, metavar="N",
                   help="prompt length (default: the keys' chunks exactly, plus one token)")
    add_client_args(e)
    e.set_defaults(func=run_explain)


# --------------------------------------------------------------------------------------------
# live-mode hooks (wired by the daemon's owner)


def fetch_live_costs(socket: str | None) -> dict[str, Any]:
    """The daemon's calibrated tier costs, and the model and device of the engine that last asked
    for a plan, if one has: {"tiers": {name: TierCost dict}, "device": DeviceThroughput dict | None,
    "shape": ..., "models": {layout_id: {"shape", "device"}} (every engine's)}."""
    from tierd.client import Client

    with Client.connect(socket, name="tierd-plan", map_arena=False) as client:
        return client._call("costs")


def explain_keys(args: argparse.Namespace) -> int:
    """Look the keys up on the daemon (without counting a lookup) and print where each is, what
    loading it costs, and the plan for them if an engine has told the daemon its model."""
    from tierd.client import Client

    request: dict[str, Any] = {"keys": [parse_key(k) for k in args.keys]}
    if args.prompt_tokens is not None:
        request["prompt_tokens"] = int(args.prompt_tokens)
    with Client.connect(args.socket, name="tierd-explain", map_arena=False) as client:
        report = client._call("explain", **request)
    if args.json:
        print_json(report)
        return 0
    print_table(["key", "tier", "size", "predicted load"],
                [[r["key"], r["tier"] or "-", r["size"] or "-",
                  f"{r['load_s'] * 1e3:.3f} ms" if r["load_s"] is not None else "-"] for r in report["chunks"]])
    print(f"\n{report['prefix']} leading chunk(s) present")
    plan = report["plan"]
    if plan is None:
        print("no plan: no engine has told this daemon its model yet (the vLLM connector does on its first lookup);"
              " use `tierd plan --hit TIER:CHUNKS,...` to plan offline")
    else:
        print(f"plan: load {plan['load_chunks']} chunk(s), recompute from token {plan['recompute_from_token']}; "
              f"predicted TTFT {plan['predicted_ttft_s']}s vs full recompute {plan['predicted_full_recompute_s']}s "
              f"({plan['decided_by']})")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    for k in args.keys:
        parse_key(k)  # bad keys fail here with a clear message, before any connection
    if args.prompt_tokens is not None:
        _int_arg(args.prompt_tokens, "--prompt-tokens", minimum=1)
    return explain_keys(args)


# --------------------------------------------------------------------------------------------
# plan


def run(args: argparse.Namespace) -> int:
    shape = _shape_from_args(args)
    prompt = _int_arg(args.prompt_tokens, "--prompt-tokens", minimum=1)
    chunk_tokens = _int_arg(args.chunk_tokens, "--chunk-tokens", minimum=1)
    if args.dtype not in DTYPE_SIZES:
        raise ConfigError(f"--dtype {args.dtype!r}: use one of {', '.join(sorted(DTYPE_SIZES))}")
    tiers = [parse_tier_spec(spec) for spec in args.tier]
    device: DeviceThroughput | None = None
    if args.device_flops is not None:
        device = DeviceThroughput(parse_flops(args.device_flops, "--device-flops"),
                                  parse_duration(args.device_overhead, "--device-overhead"))
    if not tiers:
        live = fetch_live_costs(args.socket)
        tiers = [TierCost.from_dict(t) for t in live.get("tiers", {}).values()]
        if device is None and live.get("device") and live["device"].get("flops_per_s"):
            device = DeviceThroughput.from_dict(live["device"])
    if device is None:
        raise ConfigError("--device-flops missing: give the device's sustained prefill FLOP/s, e.g. 3e14 "
                          "(an H100 at ~30% of bf16 peak) or 1e11 (a few CPU cores)")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ConfigError(f"--tier names {names}: each tier may be given once")
    model = CostModel(shape, device, tiers)
    hit = parse_hit_spec(args.hit, model) if args.hit else None
    report = build_report(model, args.dtype, prompt, chunk_tokens, hit)
    if args.json:
        print_json(report)
    else:
        print_report(report)
    return 0


def build_report(model: CostModel, dtype: str, prompt_tokens: int, chunk_tokens: int,
                 hit: list[str] | None = None) -> dict[str, Any]:
    """Everything `plan` prints, as plain data (the --json output)."""
    shape = model.shape
    bpt = shape.kv_bytes_per_token(dtype)
    chunk_bytes = bpt * chunk_tokens
    full = prompt_tokens // chunk_tokens
    rows = []
    for name, tier in model.tiers.items():
        decision = model.plan([name] * full, chunk_tokens, chunk_bytes, prompt_tokens)
        rows.append({
            "name": name,
            "bandwidth_bytes_per_s": tier.bandwidth,
            "latency_s": tier.latency,
            "load_prefix_s": model.load_seconds(name, full * chunk_bytes) if full else 0.0,
            "break_even_tokens": model.break_even_tokens(name, bpt),
            "min_admit_position": model.min_admit_position(name, chunk_tokens, chunk_bytes),
            "plan": decision.to_dict(),
        })
    hit_plan = None
    if hit is not None:
        if len(hit) > full:
            raise ConfigError(f"--hit names {len(hit)} chunks but a {prompt_tokens}-token prompt has only {full} "
                              f"full chunks of {chunk_tokens} tokens")
        hit_plan = model.plan(hit + [None] * (full - len(hit)), chunk_tokens, chunk_bytes, prompt_tokens).to_dict()
    return {
        "model": {**shape.to_dict(), "params": shape.params},
        "dtype": dtype,
        "kv_bytes_per_token": bpt,
        "prompt_tokens": prompt_tokens,
        "chunk_tokens": chunk_tokens,
        "chunk_bytes": chunk_bytes,
        "full_chunks": full,
        "device": model.device.to_dict(),
        "flops": shape.prefill_flops(prompt_tokens),
        "recompute_s": model.recompute_seconds(prompt_tokens),
        "tiers": rows,
        "hit_plan": hit_plan,
    }


def print_report(r: dict[str, Any]) -> None:
    m = r["model"]
    print(f"model     {m['num_layers']} layers, hidden {m['hidden_size']}, {m['num_attention_heads']} heads / "
          f"{m['num_kv_heads']} KV heads x {m['head_dim']}, {m['params'] / 1e9:.3g}B params; "
          f"KV {_fmt_bytes(r['kv_bytes_per_token'])}/token ({r['dtype']})")
    print(f"prompt    {r['prompt_tokens']} tokens = {r['full_chunks']} full chunks of {r['chunk_tokens']} "
          f"({_fmt_bytes(r['chunk_bytes'])} each)")
    dev = r["device"]
    print(f"recompute {_fmt_s(r['recompute_s'])} ({r['flops'] / 1e12:.3g} TFLOP at {dev['flops_per_s']:.3g} FLOP/s"
          f"{', overhead ' + _fmt_s(dev['overhead_s']) if dev['overhead_s'] else ''})")
    print()
    rows = []
    for t in r["tiers"]:
        p = t["plan"]
        be = t["break_even_tokens"]
        adm = t["min_admit_position"]
        rows.append([t["name"], _fmt_rate(t["bandwidth_bytes_per_s"]), _fmt_s(t["latency_s"]), _fmt_s(t["load_prefix_s"]),
                     "never" if be is None else be, "never" if adm is None else adm, _decision(p),
                     _fmt_s(p["predicted_ttft_s"]), f"{p['predicted_full_recompute_s'] / p['predicted_ttft_s']:.2f}x"])
    print_table(["tier", "bandwidth", "latency", "load prefix", "break-even tok", "admit from tok",
                 "decision (prefix in this tier)", "ttft", "speedup"], rows)
    if r["hit_plan"] is not None:
        p = r["hit_plan"]
        parts = ", ".join(f"{t['tier']} {t['chunks']} chunks {_fmt_s(t['seconds'])}" for t in p["tiers"])
        print()
        print(f"hit plan  {p['present_chunks']} leading chunks present; {_decision(p)}"
              f"{' (' + parts + ')' if parts else ''}; ttft {_fmt_s(p['predicted_ttft_s'])} vs full recompute "
              f"{_fmt_s(p['predicted_full_recompute_s'])}")


def _decision(p: dict[str, Any]) -> str:
    if p["load_chunks"] == 0:
        return "recompute all"
    return (f"load {p['load_chunks']} chunks (tokens 0-{p['load_tokens']}), "
            f"recompute from {p['recompute_from_token']}")


# --------------------------------------------------------------------------------------------
# argument parsing (one-line errors, no argparse usage dumps)


def _shape_from_args(args: argparse.Namespace) -> ModelShape:
    given = {dest: getattr(args, dest) for dest in _SHAPE_FLAGS if getattr(args, dest) is not None}
    if args.model_config is not None:
        if given:
            flags = ", ".join(_SHAPE_FLAGS[d][0] for d in given)
            raise ConfigError(f"--model-config and {flags}: give either a config.json or the shape flags, not both")
        path = Path(args.model_config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--model-config {str(path)!r}: cannot read it ({exc.strerror or exc}); "
                              f"give the path of a Hugging Face config.json") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--model-config {str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return ModelShape.from_hf_config(config)
    missing = [flag for dest, (flag, _, required) in _SHAPE_FLAGS.items() if required and dest not in given]
    if missing:
        raise ConfigError(f"model shape incomplete, missing {' '.join(missing)}: give them or --model-config CONFIG_JSON")
    values = {_SHAPE_FLAGS[d][1]: _int_arg(v, _SHAPE_FLAGS[d][0], minimum=1) for d, v in given.items()}
    values.setdefault("num_kv_heads", values["num_attention_heads"])
    if "head_dim" not in values:
        if values["hidden_size"] % values["num_attention_heads"]:
            raise ConfigError(f"--hidden {values['hidden_size']} is not a multiple of --heads "
                              f"{values['num_attention_heads']}: give --head-dim")
        values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
    try:
        return ModelShape(**values)
    except TierdError as exc:
        raise ConfigError(str(exc)) from None


def _int_arg(text: str, flag: str, *, minimum: int) -> int:
    try:
        value = int(str(text).replace("_", ""), 10)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give a whole number") from None
    if value < minimum:
        raise ConfigError(f"{flag} {text!r}: must be at least {minimum}")
    return value


_TIER_RE = re.compile(r"\s*(?P<name>[A-Za-z0-9_.-]+)\s*=\s*(?P<bw>[^,]+?)\s*,\s*(?P<lat>[^,]+?)\s*")
_DURATION_RE = re.compile(r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>ns|us|µs|ms|s|)", re.ASCII | re.IGNORECASE)
_DURATION_DIVISORS = {"ns": 1e9, "us": 1e6, "µs": 1e6, "ms": 1e3, "s": 1.0, "": 1.0}
_FLOPS_RE = re.compile(r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<prefix>[kKMGTP]?)\s*(?:flop/?s|flops)?",
                       re.IGNORECASE)
_FLOPS_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_tier_spec(spec: str) -> TierCost:
    """'dram=10GB/s,20us' -> TierCost('dram', 1e10, 2e-5). Sizes as `tierd.sizes` reads them."""
    m = _TIER_RE.fullmatch(spec)
    if m is None:
        raise ConfigError(f"--tier {spec!r}: use NAME=BANDWIDTH,LATENCY, e.g. dram=10GB/s,20us or s3=200MB/s,30ms")
    bw_text = m["bw"]
    if bw_text.lower().endswith("/s"):
        bw_text = bw_text[:-2]
    bandwidth = parse_size(bw_text.strip(), key=f"--tier {m['name']} bandwidth")
    if bandwidth <= 0:
        raise ConfigError(f"--tier {spec!r}: bandwidth must be positive, e.g. 10GB/s")
    latency = parse_duration(m["lat"], f"--tier {m['name']} latency")
    return TierCost(m["name"], float(bandwidth), latency)


def parse_duration(text: str, flag: str) -> float:
    """'20us', '1.5ms', '0.03s', '0.03' (seconds) -> seconds."""
    m = _DURATION_RE.fullmatch(str(text).strip())
    if m is None:
        raise ConfigError(f"{flag} {text!r}: give a duration like 20us, 1.5ms or 0.03s")
    return float(m["num"]) / _DURATION_DIVISORS[m["unit"].lower()]


def parse_flops(text: str, flag: str) -> float:
    """'1e12', '300T', '300 TFLOP/s' -> FLOP/s (SI prefixes: FLOPs are always powers of 1000)."""
    m = _FLOPS_RE.fullmatch(str(text).strip())
    value = float(m["num"]) * _FLOPS_PREFIX[m["prefix"]] if m else 0.0
    if m is None or value <= 0:
        raise ConfigError(f"{flag} {text!r}: give a positive FLOP/s figure like 3e14 or 300T")
    return value


def parse_hit_spec(spec: str, model: CostModel) -> list[str]:
    """'dram:4,nvme:8' -> ['dram'] * 4 + ['nvme'] * 8 (tiers must have costs)."""
    out: list[str] = []
    for part in spec.split(","):
        name, sep, count = part.strip().partition(":")
        if not sep or not name:
            raise ConfigError(f"--hit {spec!r}: use TIER:CHUNKS,... in prefix order, e.g. dram:4,nvme:8")
        if name not in model.tiers:
            raise ConfigError(f"--hit {spec!r}: tier {name!r} has no cost; known tiers are {sorted(model.tiers)}")
        out.extend([name] * _int_arg(count, f"--hit {name}", minimum=0))
    return out


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt_rate(bps: float) -> str:
    for unit, scale in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} B/s"


def _fmt_bytes(n: int) -> str:
    return format_size(n)
