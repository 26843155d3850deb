"""`tierd evict`: remove chunks by key, namespace, tier, or all of them."""
from __future__ import annotations

import argparse
import sys

from tierd.cli.common import add_client_args, connect, parse_key, print_json
from tierd.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evict", help="evict chunks (asks for confirmation unless --yes)")
    add_client_args(p)
    p.add_argument("keys", nargs="*", help="chunk keys (32 hex digits)")
    p.add_argument("--namespace", help="every chunk of this namespace")
    p.add_argument("--tier", help="only from this tier (dram demotes down; nvme drops the NVMe copy)")
    p.add_argument("--all", action="store_true", help="every chunk")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keys = [parse_key(k) for k in args.keys] or None
    if keys is None and args.namespace is None and not args.all:
        raise InvalidArgumentError("evict what? give keys, --namespace NS, or --all")
    what = (f"{len(keys)} chunk(s)" if keys else f"namespace {args.namespace!r}" if args.namespace else "ALL chunks")
    where = f" from tier {args.tier}" if args.tier else ""
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidArgumentError(f"refusing to evict {what}{where} without confirmation; add --yes")
        if input(f"evict {what}{where}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing evicted")
            return 1
    with connect(args) as client:
        result = client.evict(keys=keys, namespace=args.namespace, tier=args.tier, everything=args.all)
    if args.json:
        print_json(result)
    else:
        print(f"evicted {result['evicted']}; skipped {result['pinned']} pinned, {result['busy']} in use")
    return 0
