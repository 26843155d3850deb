"""`tierd serve`: run the daemon."""
from __future__ import annotations

import argparse

from tierd.config import add_serve_arguments, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the daemon (DRAM arena + NVMe directory)")
    add_serve_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tierd.daemon.server import serve

    return serve(load_config(args))
