"""`tierd quarantine`: what the live canary found per tier and layout, and which tiers are
quarantined; `tierd quarantine clear [TIER]` serves a quarantined tier's chunks again."""
from __future__ import annotations

import argparse
import time
from typing import Any

from tierd.cli.common import add_client_args, connect, print_json, print_table
from tierd.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quarantine", help="the live canary's findings and quarantined tiers: show, or clear")
    add_client_args(p)
    p.add_argument("action", nargs="?", choices=["show", "clear"], default="show",
                   help="show (default), or clear: serve the quarantined tier's chunks again")
    p.add_argument("tier", nargs="?", help="with clear: the tier to clear (default: every quarantined tier)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tier is not None and args.action != "clear":
        raise InvalidArgumentError(f"a tier ({args.tier!r}) is named only with clear, e.g. "
                                   f"`tierd quarantine clear {args.tier}`")
    with connect(args) as client:
        reply = client.quarantine(clear=args.action == "clear", tier=args.tier)
    if args.json:
        print_json(reply)
        return 0
    if args.action == "clear":
        print(f"cleared: {', '.join(reply['cleared'])}" if reply["cleared"] else "no tier was quarantined")
    _show(reply)
    return 0


def _error(value: float) -> str:
    return "inf" if value < 0 else f"{value:.3g}"


def _show(reply: dict[str, Any]) -> None:
    rows = [[tier, layout_id, c["compared"], c["exact"], c["within"], c["diverged"], _error(c["max_error"])]
            for tier, layouts in reply["by_tier"].items() for layout_id, c in layouts.items()]
    if rows:
        print_table(["tier", "layout", "compared", "exact", "within bound", "diverged", "max rel. error"], rows)
    else:
        print("the canary has compared no chunk yet (connector option verify_sample)")
    quarantine = reply["quarantine"]
    if not quarantine["tiers"]:
        print(f"\nno tier is quarantined (a tier is after {quarantine['after']} diverged chunks"
              f"{'' if quarantine['after'] else ': never, --quarantine-after 0'})")
    for tier, entry in quarantine["tiers"].items():
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["since"]))
        print(f"\nQUARANTINED {tier} since {since}: {entry['reason']}; its chunks are not served. "
              f"`tierd quarantine clear {tier}` once it is fixed")
