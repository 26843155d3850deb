"""`tierd stat`: capacity, use and hit ratio of each tier."""
from __future__ import annotations

import argparse

from tierd.cli.common import add_client_args, connect, format_bytes, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stat", help="tiers: capacity, used, chunks, hit ratio")
    add_client_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        stat = client.stat()
    if args.json:
        print_json(stat)
        return 0
    rows = [
        [t["name"], format_bytes(t["capacity_bytes"]), format_bytes(t["used_bytes"]), t["chunks"], t["hits"],
         t["misses"], f"{t['hit_ratio']:.3f}", t["evictions"], t["corrupt"]]
        for t in stat["tiers"]
    ]
    print_table(["tier", "capacity", "used", "chunks", "hits", "misses", "hit ratio", "evictions", "corrupt"], rows)
    for t in stat["tiers"]:
        if t.get("codec", "raw") != "raw":
            ratio = f"{t['codec_ratio']:.2f}x" if t["codec_ratio"] else "-"
            decode = f"{t['codec_decode_bytes_per_s'] / 1e9:.2f} GB/s" if t["codec_decode_bytes_per_s"] else "-"
            lossy = "" if t["codec_lossless"] else " (lossy)"
            print(f"\n{t['name']} codec {t['codec']}{lossy}: ratio {ratio}, decode {decode}; {t['codec_encoded']} "
                  f"encoded, {t['codec_stored_raw']} stored raw, {t['codec_decoded']} decoded, "
                  f"{t['codec_decode_failures']} failed to decode")
    for t in stat["tiers"]:
        if "url" in t:  # the shared object tier
            print(f"\nobject tier {t['url']}: node {t['node']}, write-{t['write_mode']}, circuit {t['breaker']}; "
                  f"uploads queued {t['upload_queued']} ({format_bytes(t['upload_queue_bytes'])}), "
                  f"dropped {t['upload_dropped']}, lost {t['uploads_lost']}; found by lookups {t['remote_found']}, "
                  f"lookups over budget {t['remote_budget_exceeded']}")
    print(f"\n{stat['chunks']} chunks, {stat['sessions']} clients, {stat['leases']} leases, "
          f"{stat['reservations']} reservations, {stat['lookups']} lookups")
    return 0
