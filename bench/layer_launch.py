"""Host time per layer of a layer-wise load: what the load path costs the host for each of the
forward pass's layers, the batch checked once (`LayerwiseScatter`: `prepare`, then one launch and
one event per layer) against the per-layer checking of the code before issue 23 (each layer's
launch checked and described the whole batch again), same run.

    python -m bench.layer_launch [--quick] [--device cuda]

An 8k-token prefix (32 chunks of 256 tokens) of a 32-layer, 8-KV-head, head-dim-128 bf16 model
in vLLM's GPU layout (LBNHC, block size 16: 512 runs), held in CPU memory and copied through the
CPU implementation of the device interface. The kernels are replaced by a launch that moves
nothing, and the streams run host functions at once (as CUDA's do: only the kernel is
asynchronous there), so the figure is host work alone. On a GPU the per-layer path also did two
`pin_memory()` calls, two host-to-device copies and a `cudaPointerGetAttributes` per chunk for
every layer, which the batched path does once per batch: this CPU figure leaves those out, so
it understates the difference on a GPU. `--device cuda` (a GPU machine) measures the same two
paths with the real CUDA kernels and streams: the host time of queuing a load (the copies
themselves run asynchronously and are waited for outside the timing).
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch

import native
from bench.figures import figure
from native.device import Device, for_device
from native.device_cpu import CpuDevice, HostStream
from native.pipeline import LayerwiseScatter

LAYERS, HEADS, HEAD_DIM, TOKENS, BLOCK = 32, 8, 128, 256, 16
PREFIX = 8192


class NullKernels:
    """The C++ kernels' interface with no bytes moved: what is left is the host's work."""

    openmp_threads = 1

    def copy(self, *args: object) -> None:
        return None

    copy_amx = copy


class ImmediateDevice(CpuDevice):
    """Side streams that run host functions at once, as on CUDA (no bytes move here anyway)."""

    def stream(self) -> HostStream:  # type: ignore[override]
        return HostStream()


def per_layer_start(copier: native.Copier, device: Device, chunks: list, runs: np.ndarray) -> None:
    """The load's start before issue 23: every layer's launch is a full copier call."""
    stream = device.stream()
    stream.wait_stream(device.current())  # type: ignore[arg-type]
    for layer in range(LAYERS):
        stream.run(functools.partial(copier.scatter, chunks, runs, range(layer, layer + 1)))
        stream.record()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: host work alone (no bytes move); cuda: the real kernels and streams")
    args = parser.parse_args()
    rounds = 30 if args.quick else 200
    per_chunk = TOKENS // BLOCK
    n_chunks = PREFIX // TOKENS
    where = torch.device(args.device)
    buf = torch.zeros(LAYERS, n_chunks * per_chunk + 1, BLOCK, HEADS, 2 * HEAD_DIM, dtype=torch.bfloat16, device=where)
    cache = native.PagedCache.from_vllm_gpu([buf[i].permute(0, 2, 1, 3) for i in range(LAYERS)], HEAD_DIM)
    chunk_bytes = LAYERS * 2 * TOKENS * HEADS * HEAD_DIM * 2
    device: Device
    arena = np.zeros(n_chunks * chunk_bytes, dtype=np.uint8)  # chunks are arena views, as the worker's are
    if args.device == "cuda":
        copier, device = native.copier(cache, "cuda"), for_device(where)
        if device.pin(arena) is None:
            raise SystemExit("could not register the arena as pinned memory")
    else:
        copier, device = native.copier(cache, "cpp"), ImmediateDevice()
        copier.kernels = NullKernels()  # type: ignore[attr-defined]
    chunks = [arena[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(n_chunks)]
    runs = native.concat(*(native.block_runs(list(range(i * per_chunk, (i + 1) * per_chunk)), BLOCK, chunk=i)
                           for i in range(n_chunks)))
    batched = LayerwiseScatter(copier, device)

    def settle() -> None:  # the copies of the last round end outside the timing
        if args.device == "cuda":
            torch.cuda.synchronize()

    paths = {"batched": lambda: batched.start(chunks, runs),
             "per_layer": lambda: per_layer_start(copier, device, chunks, runs)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        fn()  # warm-up
        settle()
    for _ in range(rounds):  # interleaved: load from other users of the machine hits both alike
        for name, fn in paths.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
            settle()
    us = {name: float(np.median(t)) / LAYERS * 1e6 for name, t in times.items()}
    print(f"{args.device}: {n_chunks} chunks, {len(runs)} runs, {LAYERS} layers, {rounds} rounds; "
          "host time per layer (median):")
    for name, v in us.items():
        print(f"  {name:<10} {v:8.1f} us")
    figure(f"load_host_time_per_layer_{args.device}", us["batched"], "us", "per_layer_checks", us["per_layer"],
           higher_is_better=False, chunks=n_chunks, runs=len(runs), layers=LAYERS)


if __name__ == "__main__":
    main()
