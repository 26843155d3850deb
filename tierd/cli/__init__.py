"""The `tierd` command line. Each subcommand lives in its own module with a `register(subparsers)`
function that adds its parser and sets `func=run`, where `run(args) -> int` is the exit status."""
from __future__ import annotations

import argparse
import importlib
import sys

from tierd.errors import TierdError

#: Subcommand modules under tierd.cli, in the order `tierd --help` lists them.
COMMAND_MODULES = ["serve", "stat", "ls", "inspect", "evict", "pin", "quota", "mrc", "plan", "gc", "doctor"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierd", description="Tiered KV-cache store for LLM serving")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tierd.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tierd.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TierdError as exc:
        print(f"tierd {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
