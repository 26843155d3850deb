"""`tierd doctor`: what this machine runs — which gather/scatter implementation (C++, CUDA or
torch) the engine connectors use here, and why."""
from __future__ import annotations

import argparse

from tierd.cli.common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="which gather/scatter implementation runs here, and why")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from native import report

    info = report()
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key:<15} {value}")
    return 0
