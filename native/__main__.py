"""`python -m native [--json]`: which gather/scatter implementation is active here, and why
(the report a `tierd doctor` command lists)."""
from __future__ import annotations

import argparse
import json

from native.backend import report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m native", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    info = report()
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
