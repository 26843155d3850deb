"""A second SGLang process for the shared-daemon test: builds its own host pool, fills it from a
seed, and stores its pages through its own TierdHiCacheStorage.

    python -m tests.connectors.sglang.peer SOCKET KIND LAYOUT SEED PAGES

Prints one JSON line: the batch_set_v1 results."""
from __future__ import annotations

import json
import sys

from tests.connectors.sglang.pools import PAGE, fill_random, make_pool, storage_config  # imports SGLang first

from connectors.sglang.backend import TierdHiCacheStorage  # noqa: E402
from sglang.srt.mem_cache.utils import get_hash_str  # noqa: E402


def main(argv: list[str]) -> int:
    socket, kind, layout, seed, pages = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    pool = make_pool(kind, layout)
    fill_random(pool, seed)
    backend = TierdHiCacheStorage(storage_config({"socket": socket}, mla=kind == "mla"), {})
    backend.register_mem_pool_host(pool)
    keys = get_hash_str(list(range(seed, seed + pages * PAGE)), None, page_size=PAGE)
    results = backend.batch_set_v1(keys, pool.alloc(pages * PAGE))
    backend.close()
    print(json.dumps({"stored": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
