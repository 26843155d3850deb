"""SGLang HiCache L3: tierd's backend against SGLang's in-tree HiCacheFile, same pages, one run.

    python -m bench.sglang_backend [--quick] [--layout page_first] [--dir DIR]

Both backends sit under one directory (tierd's NVMe tier in DIR/tierd, HiCacheFile's files in
DIR/hicache) and move the same pages of one SGLang host KV pool (real
`MHATokenToKVPoolHost`, bf16, Llama-3-8B shape per TP rank: 32 layers, 8 KV heads, head dim
128; page 64 tokens = 8 MiB), with SGLang's own page keys. Each backend is driven the way
SGLang's cache controller drives it:

- tierd with `interface_v1`: `batch_set_v1` / `batch_get_v1` on host-pool indices (one copy
  between the pool and the shared arena per page);
- HiCacheFile through the generic path (`_generic_page_set` / `_generic_page_get`):
  `get_data_page` + `batch_set`, and `batch_get` into `get_dummy_flat_data_page` buffers +
  `set_from_flat_data_page`;
- tierd through that same generic path too, for a same-interface comparison.

Figures: batch_set and batch_get GB/s (32 pages per call, 256 MiB; fresh keys for every set),
and batch_exists latency for 128 present pages (SGLang's STORAGE_BATCH_SIZE, its largest
query). The backends run in turns, round after round, and each figure is the median round. Ratios are tierd over
HiCacheFile (throughput) and HiCacheFile over tierd (latency), so higher is better. Reads are
warm on both sides: tierd's from its DRAM arena, HiCacheFile's from the page cache. The
default `page_first` layout is tierd's hardest case: reordering a page into the canonical
chunk moves 2 KiB runs (heads x head_dim), where `layer_first` and `page_first_direct` move
whole page-long runs per layer.

SGLang is imported with `connectors.sglang.cpu_import` (stand-ins for triton and torchvision
while its modules import, on a machine without them; see that module).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.figures import figure
from connectors.sglang.cpu_import import import_sglang
from tierd.daemon.launch import DaemonProcess

import_sglang()

from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import STORAGE_BATCH_SIZE, HiCacheStorage, HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang.srt.mem_cache.utils import get_hash_str  # noqa: E402

MODEL = "meta-llama/Meta-Llama-3-8B"
GB = 1e9


def host_pool(layout: str, layers: int, page: int, pages: int) -> MHATokenToKVPoolHost:
    """SGLang's host pool for `pages` pages, built from CPU "device" buffers (SGLang builds it
    the same way from GPU ones)."""
    heads, dim, tokens = 8, 128, 2 * page  # the device pool only lends geometry here
    k = [torch.zeros(tokens, heads, dim, dtype=torch.bfloat16) for _ in range(layers)]
    v = [torch.zeros(tokens, heads, dim, dtype=torch.bfloat16) for _ in range(layers)]

    def ptrs(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)

    info = MHABufferInfo(buffers=KVBuffers(k=tuple(k), v=tuple(v), k_data_ptrs=ptrs(k), v_data_ptrs=ptrs(v),
                                           layout=KVBufferLayout.NHD),
                         page_size=page, head_num=heads, head_dim=dim, v_head_dim=dim, dtype=torch.bfloat16,
                         device=torch.device("cpu"))
    pool = MHATokenToKVPoolHost(info, 1.0, 0, page, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=tokens, start_layer=0, end_layer=layers,
                                host_token_capacity=pages * page)
    raw = pool.kv_buffer.view(torch.uint8)
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    return pool


def config(extra: dict[str, Any]) -> HiCacheStorageConfig:
    return HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                                is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=False,
                                model_name=MODEL, extra_config=extra)


def generic_set(backend: HiCacheStorage, pool: Any, keys: list[str], idx: torch.Tensor) -> bool:
    """SGLang's HiCacheController._generic_page_set."""
    p = pool.page_size
    return backend.batch_set(keys, [pool.get_data_page(idx[i * p]) for i in range(len(keys))])


def generic_get(backend: HiCacheStorage, pool: Any, keys: list[str], idx: torch.Tensor) -> int:
    """SGLang's HiCacheController._generic_page_get: leading pages read into the pool."""
    p = pool.page_size
    data = backend.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    n = 0
    for i, page in enumerate(data or []):
        if page is None:
            break
        pool.set_from_flat_data_page(idx[i * p], page)
        n += 1
    return n


def alternating(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (one warm-up round, then `repeats` rounds of
    all of them), so load from other processes on a shared machine hits every side alike. The
    order rotates every round: whoever runs right after another side's frees gets its memory
    back already mapped (the generic path allocates a fresh page buffer per page)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for rnd in range(repeats + 1):
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            if rnd:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(args: argparse.Namespace) -> None:
    layers, page = (8, 64) if args.quick else (32, 64)
    batch = 32  # pages per set/get call (SGLang sends up to STORAGE_BATCH_SIZE = 128)
    repeats = 3 if args.quick else 6
    pool = host_pool(args.layout, layers, page, 2 * batch)
    page_bytes = pool.get_data_page(0).numel() * 2
    nbytes = batch * page_bytes
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tierd-sglang-bench-"))
    sets_per_backend = 2 * (repeats + 1)  # v1 and generic, warm-up + measured rounds, each of fresh pages
    arena = max(256 << 20, int(1.3 * sets_per_backend * nbytes))
    print(f"layout {args.layout}: {layers} layers x 8 heads x 128 x bf16, page {page} tokens = "
          f"{page_bytes / 2**20:.1f} MiB; {batch} pages ({nbytes / 2**20:.0f} MiB) per call; directory {root}")
    daemon = DaemonProcess(root / "tierd.sock", ["--dram", str(arena), "--nvme-dir", str(root / "tierd"),
                                                 "--nvme", str(2 * arena), "--no-calibrate"],
                           log_path=root / "tierd.log").start()
    tierd = file = None
    try:
        reg = {"backend_name": "tierd", "module_path": "connectors.sglang.backend",
               "class_name": "TierdHiCacheStorage", "interface_v1": 1, "socket": daemon.socket}
        tierd = StorageBackendFactory.create_backend("dynamic", config(reg), pool)
        file = StorageBackendFactory.create_backend("file", config({"file_storage_path": str(root / "hicache")}), pool)
        for b in (tierd, file):
            b.register_mem_pool_host(pool)
        src, dst = pool.alloc(batch * page), pool.alloc(batch * page)
        want = [pool.get_data_page(src[i * page]).clone() for i in range(batch)]
        salts = iter(range(10**6))

        def fresh_keys() -> list[str]:
            s = next(salts)
            return get_hash_str([s * 10**7 + t for t in range(batch * page)], None, page_size=page)

        written: dict[str, list[str]] = {}
        everything: dict[str, list[str]] = {"v1": [], "generic": [], "file": []}

        def setter(name: str, store: Callable[[list[str]], object]) -> Callable[[], None]:
            def once() -> None:
                keys = fresh_keys()
                assert store(keys), f"{name}: a set failed"
                written[name] = keys
                everything[name] += keys
            return once

        sets = alternating({
            "v1": setter("v1", lambda k: all(tierd.batch_set_v1(k, src))),
            "generic": setter("generic", lambda k: generic_set(tierd, pool, k, src)),
            "file": setter("file", lambda k: generic_set(file, pool, k, src)),
        }, repeats)

        def check(read: Callable[[], object]) -> None:
            for i in range(batch):  # the timed reads already filled dst: clear it, read once more
                pool.get_data_page(dst[i * page], flat=False).zero_()
            read()
            for i in range(batch):
                assert torch.equal(pool.get_data_page(dst[i * page]).view(torch.int16), want[i].view(torch.int16))

        readers: dict[str, Callable[[], object]] = {
            "v1": lambda: tierd.batch_get_v1(written["v1"], dst),
            "generic": lambda: generic_get(tierd, pool, written["generic"], dst),
            "file": lambda: generic_get(file, pool, written["file"], dst),
        }
        gets = alternating(readers, repeats)
        for read in readers.values():
            check(read)

        # exists: one STORAGE_BATCH_SIZE query of present pages (all the sets' pages together)
        ex_t, ex_f = everything["v1"][:STORAGE_BATCH_SIZE], everything["file"][:STORAGE_BATCH_SIZE]
        assert tierd.batch_exists(ex_t) == len(ex_t) == STORAGE_BATCH_SIZE == file.batch_exists(ex_f)
        exists = alternating({"tierd": lambda: tierd.batch_exists(ex_t),
                              "file": lambda: file.batch_exists(ex_f)}, 20 if args.quick else 50)
    finally:
        for b in (tierd, file):
            if b is not None and hasattr(b, "close"):
                b.close()
        daemon.stop()
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    common = {"layout": args.layout, "page_mib": round(page_bytes / 2**20, 2), "pages_per_call": batch}
    for op, times in (("set", sets), ("get", gets)):
        for path in ("v1", "generic"):
            figure(f"sglang_batch_{op}_{path}", nbytes / times[path] / GB, "GB/s", "HiCacheFile",
                   nbytes / times["file"] / GB, **common)
    figure(f"sglang_batch_exists_{STORAGE_BATCH_SIZE}", exists["tierd"] * 1e3, "ms", "HiCacheFile",
           exists["file"] * 1e3, higher_is_better=False, layout=args.layout, pages_per_call=STORAGE_BATCH_SIZE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sglang_backend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 layers (2 MiB pages), 3 rounds (under a minute)")
    ap.add_argument("--layout", default="page_first", choices=("layer_first", "page_first", "page_first_direct"),
                    help="SGLang host pool layout (--hicache-mem-layout)")
    ap.add_argument("--dir", help="directory for both backends (default: a fresh temporary one, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
