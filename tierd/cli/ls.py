"""`tierd ls`: the chunks the daemon holds, filtered and sorted."""
from __future__ import annotations

import argparse
import time

from tierd.cli.common import add_client_args, connect, format_bytes, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list stored chunks")
    add_client_args(p)
    p.add_argument("--tier", help="only chunks with a copy in this tier (dram, nvme)")
    p.add_argument("--namespace", help="only chunks of this namespace")
    p.add_argument("--prefix", dest="key_prefix", help="only keys starting with these hex digits")
    p.add_argument("--sort", default="last_access", choices=["last_access", "size", "created", "hits"],
                   help="newest/largest first (default: last_access)")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    filters = {k: getattr(args, k) for k in ("tier", "namespace", "key_prefix", "sort", "limit") if getattr(args, k) is not None}
    with connect(args) as client:
        rows = client.ls(**filters)
    if args.json:
        print_json(rows)
        return 0
    now = time.time()
    print_table(
        ["key", "tiers", "size", "namespace", "hits", "pinned", "idle"],
        [[r["key"], ",".join(r["tiers"]), format_bytes(r["size"]), r["namespace"], r["hits"],
          "yes" if r["pinned"] else "", f"{now - r['last_access']:.0f}s"] for r in rows],
    )
    return 0
