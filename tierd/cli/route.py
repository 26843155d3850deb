"""`tierd route`: which node should serve this prompt? Every node's predicted prefill saving.

    tierd route --node a=/run/a.sock --node b=/run/b.sock --tokens-file prompt.json

Asks each node's daemon where the prompt's chunks are (without counting a lookup) and ranks the
nodes by the prefill seconds each would save, priced with that node's tier costs and the
model's prefill cost (`tierd.route`). The layout (model, dtype, fingerprint) is the one the
first node's daemon has registered, or `--layout-id`. The model's prefill cost is the one the
nodes' engines told their daemons; `--model-config` and `--device-flops` stand in where a node
has none.

JSON contract (`--json`): {"layout_id", "prompt_tokens", "nodes": [NodeScore.to_dict(), ...]}
best node first.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tierd.cli.common import print_json, print_table
from tierd.cli.plan import parse_flops
from tierd.cost.device import DeviceThroughput
from tierd.cost.shape import ModelShape
from tierd.errors import ConfigError
from tierd.keys import check_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "route", help="rank nodes for a prompt by the prefill time their cached prefix saves",
        description="Ask each node's daemon where the prompt's chunks are and rank the nodes by the prefill "
                    "seconds each would save, priced with that node's own tier costs.")
    p.add_argument("--node", action="append", default=[], metavar="NAME=SOCKET",
                   help="a node and its daemon's socket; repeat for every node")
    p.add_argument("--tokens", default=None, metavar="ID,ID,...", help="the prompt's token ids, comma separated")
    p.add_argument("--tokens-file", default=None, metavar="FILE",
                   help="the prompt's token ids: a JSON list, or whitespace/comma separated integers")
    p.add_argument("--layout-id", default=None, help="the layout to key with (default: the first node's only one)")
    p.add_argument("--namespace", default="default", help="the namespace the engines store under (default: default)")
    p.add_argument("--model-config", default=None, metavar="CONFIG_JSON",
                   help="the model's Hugging Face config.json, for nodes whose engine declared no model")
    p.add_argument("--device-flops", default=None, metavar="FLOP/S",
                   help="prefill throughput, for nodes that have none (e.g. 3e14 or 300T)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tierd.route import Router, layout_of

    nodes = _nodes(args.node)
    tokens = _tokens(args.tokens, args.tokens_file)
    check_namespace(args.namespace)
    shape = _shape(args.model_config)
    device = DeviceThroughput(parse_flops(args.device_flops, "--device-flops")) if args.device_flops else None
    layout = layout_of(next(iter(nodes.values())), args.layout_id)
    router = Router(nodes, layout, namespace=args.namespace, shape=shape, device=device)
    try:
        scores = router.route(tokens)
    finally:
        router.close()
    if args.json:
        print_json({"layout_id": layout.layout_id, "prompt_tokens": len(tokens), "nodes": [s.to_dict() for s in scores]})
        return 0
    rows = [[i + 1, s.node, None if s.saving_s is None else f"{s.saving_s:.4f}", s.cached_tokens,
             ", ".join(f"{t}:{n}" for t, n in s.cached_by_tier.items()) or "-",
             None if s.load_s is None else f"{s.load_s:.4f}", s.error or ""]
            for i, s in enumerate(scores)]
    print_table(["rank", "node", "saves_s", "cached_tokens", "by_tier", "load_s", "error"], rows)
    return 0


def _nodes(specs: list[str]) -> dict[str, str]:
    if not specs:
        raise ConfigError("give at least one --node NAME=SOCKET")
    nodes: dict[str, str] = {}
    for spec in specs:
        name, sep, socket = spec.partition("=")
        if not sep or not name.strip() or not socket.strip():
            raise ConfigError(f"--node {spec!r}: use NAME=SOCKET, e.g. a=/run/tierd-a.sock")
        if name in nodes:
            raise ConfigError(f"--node {spec!r}: node {name!r} is given twice")
        nodes[name.strip()] = socket.strip()
    return nodes


def _tokens(inline: str | None, path: str | None) -> list[int]:
    if (inline is None) == (path is None):
        raise ConfigError("give the prompt with exactly one of --tokens or --tokens-file")
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"--tokens-file {path!r}: cannot read it ({exc.strerror or exc})") from None
        where = f"--tokens-file {path!r}"
    else:
        text, where = inline or "", f"--tokens {inline!r}"
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
        tokens = [int(v) for v in values]
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"{where}: give integer token ids (a JSON list, or separated by commas or spaces)") from None
    if not tokens or any(t < 0 for t in tokens):
        raise ConfigError(f"{where}: give at least one token id, none negative")
    return tokens


def _shape(path: str | None) -> ModelShape | None:
    if path is None:
        return None
    try:
        return ModelShape.from_hf_config(json.loads(Path(path).read_text()))
    except OSError as exc:
        raise ConfigError(f"--model-config {path!r}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-config {path!r}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
