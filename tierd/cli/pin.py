"""`tierd pin` / `tierd unpin`: keep chunks from being evicted, or let them go again."""
from __future__ import annotations

import argparse

from tierd.cli.common import add_client_args, connect, parse_key, print_json


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (("pin", "never evict these chunks"), ("unpin", "let these chunks be evicted again")):
        p = sub.add_parser(name, help=helptext)
        add_client_args(p)
        p.add_argument("keys", nargs="+", help="chunk keys (32 hex digits)")
        p.set_defaults(func=run, pin=name == "pin")


def run(args: argparse.Namespace) -> int:
    keys = [parse_key(k) for k in args.keys]
    with connect(args) as client:
        n = client.pin(keys) if args.pin else client.unpin(keys)
    if args.json:
        print_json({"pinned" if args.pin else "unpinned": n, "requested": len(keys)})
    else:
        print(f"{'pinned' if args.pin else 'unpinned'} {n} of {len(keys)} chunk(s)")
    return 0 if n == len(keys) else 1
