"""`tierd inspect KEY`: everything the daemon knows about one chunk."""
from __future__ import annotations

import argparse
import time

from tierd.cli.common import add_client_args, connect, parse_key, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="metadata of one chunk")
    add_client_args(p)
    p.add_argument("key", help="chunk key (32 hex digits)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    with connect(args) as client:
        info = client.inspect(key)
    if args.json:
        print_json(info)
    else:
        obj = info.pop("object", None)
        stored = info.pop("stored", {})
        known = info.pop("layout_known", None)
        model, fingerprint = info.pop("model", None), info.pop("fingerprint", None)
        for name, value in info.items():
            print(f"{name:12} {','.join(value) if isinstance(value, list) else value}")
        if known:  # the weights the chunk's KV was computed with
            print(f"{'model':12} {model}")
            print(f"{'fingerprint':12} {fingerprint or 'none (its layout was registered without a model fingerprint)'}")
        elif known is not None:
            print(f"{'fingerprint':12} unknown: layout {info.get('layout_id') or '?'} is not registered with this daemon "
                  "(an engine registers it when it connects; until then a chunk found after a restart has no model)")
        if obj is not None:  # which node wrote the object-tier copy, and when
            if "error" in obj:
                print(f"{'object':12} unknown: {obj['error']}")
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(obj["written"]))
                mine = " (this node)" if obj["written_by_this_node"] else ""
                print(f"{'object':12} written by {obj['node']}{mine} at {when} UTC, {obj['stored_bytes']} bytes")
        for tier, form in stored.items():  # how each lower tier holds it
            ratio = f", {form['ratio']:.2f}x smaller" if form["ratio"] and form["codec"] != "raw" else ""
            print(f"{'stored ' + tier:12} {form['codec']}, {form['stored_bytes']} bytes{ratio}")
    return 0
