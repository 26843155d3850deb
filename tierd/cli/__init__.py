"""The `tierd` command line. Each subcommand lives in its own module with a `register(subparsers)`
function that adds its parser and sets `func=run`, where `run(args) -> int` is the exit status."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tierd.errors import TierdError

#: Subcommand modules under tierd.cli, in the order `tierd --help` lists them.
COMMAND_MODULES = ["serve", "stat", "ls", "inspect", "evict", "pin", "quota", "quarantine", "mrc", "plan", "route", "gc",
                   "doctor"]


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


def entry() -> None:
    """The `tierd` executable: `main`, then the exit.

    A process whose object tier ran obstore's async calls may abort (SIGABRT, "Fatal Python
    error: Aborted") while the interpreter finalizes, after all its work is done: the tokio
    threads behind those calls race `Py_Finalize` (pyo3-async-runtimes' future completion). It
    hit about 1 in 10 `tierd gc` runs against SeaweedFS here, and would make a clean daemon
    shutdown report a crash. Such a process flushes its output and logs and ends without the
    interpreter's finalization; nothing of tierd's waits for it (the daemon has persisted its
    metadata and closed its tiers before `main` returns).
    """
    status = main()
    if "obstore" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        logging.shutdown()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
