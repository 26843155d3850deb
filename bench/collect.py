"""Gather the FIGURE lines of benchmark logs into the markdown table of bench/README.md.

    python -m bench.collect LOG... > table.md
"""
from __future__ import annotations

import json
import sys


def rows(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("FIGURE "):
                    fig = json.loads(line[len("FIGURE "):])
                    fig["_source"] = path
                    out.append(fig)
    return out


def main() -> None:
    print("| figure | value | baseline (same run) | ratio |")
    print("| --- | --- | --- | --- |")
    for f in rows(sys.argv[1:]):
        ratio = "n/a" if f["ratio"] is None else f"{f['ratio']:g}"  # null: a baseline of zero
        print(f"| {f['name']} | {f['value']:g} {f['unit']} | {f['baseline']}: {f['baseline_value']:g} | {ratio} |")


if __name__ == "__main__":
    main()
