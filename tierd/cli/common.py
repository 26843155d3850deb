"""Arguments and output shared by the client subcommands (--socket, --json, tables)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from tierd.client import Client


def add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=None, help="daemon socket path (default: $TIERD_SOCKET or the daemon default)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_num(r[i]) for r in rows) and rows for i in range(len(headers))]
    for n, row in enumerate(cells):
        out = []
        for i, c in enumerate(row):
            out.append(c.rjust(widths[i]) if numeric[i] and n else c.ljust(widths[i]))
        print("  ".join(out).rstrip())


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def connect(args: argparse.Namespace) -> "Client":
    from tierd.client import Client

    return Client.connect(args.socket, name="tierd-cli", map_arena=False)  # no command reads chunk bytes


def parse_key(text: str) -> bytes:
    """A chunk key given on the command line as 32 hex digits."""
    from tierd.errors import InvalidArgumentError
    from tierd.keys import KEY_BYTES

    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InvalidArgumentError(f"key {text!r}: give a chunk key as {2 * KEY_BYTES} hex digits (see `tierd ls`)")
    return key


def format_bytes(n: int) -> str:
    from tierd.sizes import format_size

    return format_size(n)
