"""`tierd quota`: namespaces' byte quotas on the local tiers and what they use; set or clear one."""
from __future__ import annotations

import argparse

from tierd.cli.common import add_client_args, connect, format_bytes, print_json, print_table
from tierd.errors import ConfigError, InvalidArgumentError
from tierd.sizes import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quota", help="per-namespace byte quotas: show, set or clear")
    add_client_args(p)
    p.add_argument("namespace", nargs="?", help="the namespace to show or set (default: all)")
    p.add_argument("size", nargs="?", help="its new quota on each local tier, e.g. 2GiB, or 'none' to clear it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    request: dict[str, object] = {}
    if args.namespace is not None:
        request["namespace"] = args.namespace
    if args.size is not None:
        if args.size.strip().lower() in ("none", "off"):
            request["clear"] = True
        else:
            try:
                request["bytes"] = parse_size(args.size, key="size")
            except ConfigError as exc:
                raise InvalidArgumentError(str(exc)) from None
    with connect(args) as client:
        reply = client._call("quota", **request)
    if args.json:
        print_json(reply)
        return 0
    quotas = reply["quotas"]
    tiers = sorted({tier for q in quotas.values() for tier in q["used"]})
    rows = [[ns, format_bytes(q["limit"]) if q["limit"] is not None else "-",
             *(format_bytes(q["used"].get(tier, 0)) for tier in tiers)] for ns, q in quotas.items()]
    print_table(["namespace", "quota", *(f"{tier} used" for tier in tiers)], rows)
    print(f"\n{reply['refused']} puts or promotions not cached because a namespace was at its quota")
    return 0
