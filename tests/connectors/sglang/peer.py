"""The second SGLang process of the SGLang tests: started once per test session (SGLang takes
seconds to import), it serves two tests.

    python -m tests.connectors.sglang.peer

It starts as a fresh CI machine would: `triton` and `torchvision` unimportable, whatever this
machine has installed, and SGLang imported through `connectors.sglang.cpu_import`. Its first
output line is what that import left behind (for test_cpu_import.py):

    {"import": {"stood_in": [...], "leftover": [...], "importable": false,
                "torch_sees_triton": false, "page_elements": n}}

Then, for each line ``SOCKET KIND LAYOUT SEED PAGES`` on stdin (for test_two_processes.py), it
builds its own host pool in that layout, fills it from the seed, stores `PAGES` pages through its
own TierdHiCacheStorage on the daemon at SOCKET, and prints one JSON line: the batch_set_v1
results (``{"stored": [...]}``), or ``{"error": "..."}``. End of stdin ends it."""
from __future__ import annotations

import importlib.abc
import json
import sys
import traceback
from typing import Any


class _Hide(importlib.abc.MetaPathFinder):
    """Makes triton and torchvision unimportable, as on a machine without them."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in ("triton", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _import_report() -> dict[str, Any]:
    from connectors.sglang.cpu_import import import_sglang

    stood_in = import_sglang()
    leftover = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "torchvision"))
    try:
        import triton  # noqa: F401

        importable = True
    except ImportError:
        importable = False
    from torch.utils._triton import has_triton_package

    from tests.connectors.sglang.pools import PAGE, fill_random, make_pool

    pool = make_pool("mha", "page_first")
    fill_random(pool, 1)
    page = pool.get_data_page(PAGE)
    return {"stood_in": stood_in, "leftover": leftover, "importable": importable,
            "torch_sees_triton": has_triton_package(), "page_elements": page.numel()}


def _store(socket: str, kind: str, layout: str, seed: int, pages: int) -> list[bool]:
    from connectors.sglang.backend import TierdHiCacheStorage
    from sglang.srt.mem_cache.utils import get_hash_str
    from tests.connectors.sglang.pools import PAGE, fill_random, make_pool, storage_config

    pool = make_pool(kind, layout)
    fill_random(pool, seed)
    backend = TierdHiCacheStorage(storage_config({"socket": socket}, mla=kind == "mla"), {})
    try:
        backend.register_mem_pool_host(pool)
        keys = get_hash_str(list(range(seed, seed + pages * PAGE)), None, page_size=PAGE)
        return backend.batch_set_v1(keys, pool.alloc(pages * PAGE))
    finally:
        backend.close()


def main() -> int:
    sys.meta_path.insert(0, _Hide())
    print(json.dumps({"import": _import_report()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            socket, kind, layout, seed, pages = line.split()
            print(json.dumps({"stored": _store(socket, kind, layout, int(seed), int(pages))}), flush=True)
        except Exception:  # the test reads it; the peer stays up for the next job
            print(json.dumps({"error": traceback.format_exc()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
