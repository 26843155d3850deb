"""`tierd gc`: enforce retention (maximum age, maximum total size) on the object tier's prefix."""
from __future__ import annotations

import argparse
import asyncio
import os
import re

from tierd.cli.common import print_json
from tierd.errors import ConfigError
from tierd.sizes import parse_size

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' or plain seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", text or "", re.ASCII)
    if not m or float(m[1]) <= 0:
        raise ConfigError(f"--max-age={text!r}: use a positive duration like 7d, 12h, 30m or 3600")
    return float(m[1]) * _UNITS[m[2] or "s"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gc", help="delete old objects from the object tier (retention)")
    p.add_argument("--object-url", default=None,
                   help="the tier's URL, e.g. s3://bucket/prefix (default: $TIERD_OBJECT_URL)")
    p.add_argument("--max-age", default=None, help="delete chunks older than this, e.g. 7d, 12h")
    p.add_argument("--max-size", default=None, help="then delete the oldest until at most this remains, e.g. 500GiB")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tierd.config import parse_object_url
    from tierd.tiers.object.retention import collect
    from tierd.tiers.object.tier import ObjectTier

    url = parse_object_url(args.object_url or os.environ.get("TIERD_OBJECT_URL"), "--object-url", None)
    if url is None:
        raise ConfigError("--object-url: name the object tier, like s3://bucket/prefix (or set TIERD_OBJECT_URL)")
    if args.max_age is None and args.max_size is None:
        raise ConfigError("give --max-age, --max-size or both: gc deletes only what a bound says")
    max_age = parse_age(args.max_age) if args.max_age is not None else None
    max_bytes = parse_size(args.max_size, key="--max-size") if args.max_size is not None else None

    async def go():
        tier = ObjectTier(url, node="gc")
        await tier.check()
        if tier.retry_after() > 0:
            raise ConfigError(f"--object-url={url!r}: the object store does not answer")
        return await collect(tier.store, max_age=max_age, max_bytes=max_bytes, dry_run=args.dry_run)

    report = asyncio.run(go())
    if args.json:
        print_json(report.to_dict())
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{report.objects} chunk objects, {report.bytes} bytes under {url}")
        print(f"{verb} {report.deleted_age + report.deleted_size} ({report.deleted_age} by age, "
              f"{report.deleted_size} by size), {report.deleted_bytes} bytes; {report.kept_objects} objects, "
              f"{report.kept_bytes} bytes remain")
        for e in report.errors:
            print(f"error: {e}")
    return 1 if report.errors else 0
