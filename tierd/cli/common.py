"""Arguments and output shared by the client subcommands (--socket, --json, tables)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence


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
