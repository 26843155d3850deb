"""What encryption at rest costs on the NVMe tier: NvmeChunkFiles write / read_into of 4 MiB chunks
with `--encrypt-key-file` (AES-256-GCM) against the same tier without it, in the same run.

Both sides are `bench.nvme_tier.Bench` (random payloads from page-aligned slots, one durable
file per chunk, every read verified), each on its own directory of the same filesystem; the
encrypted side only adds a `ChunkCipher`. Each round runs both sides back to back, alternating
which goes first, so machine noise hits both; each figure is the median round. Sequential
(one thread) and parallel (`--threads`, the daemon's default I/O threads) passes.

On a shared or virtual disk the wall-clock figures are noisy; the CPU seconds the process spent
per GB moved (all threads, `time.process_time`) are the steadier measure of what encryption
adds, and are printed too (lower is better; `ratio` is unencrypted over encrypted). Also
printed, for scale: AES-GCM itself on one core (seal and open of a 4 MiB chunk in memory)
against a memcpy of the same bytes.

    python -m bench.encryption [--quick] [--dir DIR] [--threads 4] [--rounds 3] [--io auto|direct|buffered]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python bench/encryption.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nvme_tier import CHUNK, Bench, Config, parse_args, run_in_temp_dir  # noqa: E402
from tierd.tiers.crypto import ChunkCipher  # noqa: E402
from tierd.tiers.header import associated_data  # noqa: E402
from tierd.tiers.nvme.files import NvmeChunkFiles  # noqa: E402

SIDES = ("raw", "encrypted")


def make_benches(cfg: Config) -> dict[str, Bench]:
    benches = {}
    for side in SIDES:
        sub = Config(cfg.directory / side, cfg.total_bytes, cfg.threads, cfg.rounds, cfg.direct_io)
        sub.directory.mkdir()
        bench = Bench(sub)
        if side == "encrypted":
            bench.files = NvmeChunkFiles(sub.directory / "nvme", direct_io=cfg.direct_io,
                                         cipher=ChunkCipher(os.urandom(32)))
        benches[side] = bench
    return benches


def run_tier(cfg: Config) -> tuple[list[dict], str]:
    benches = make_benches(cfg)
    results: dict[str, list[float]] = {f"{side}_{op}_{tag}": [] for side in SIDES for op in ("write", "read")
                                       for tag in ("seq", "par")}
    cpu: dict[str, list[float]] = {f"{side}_{op}": [] for side in SIDES for op in ("write", "read")}
    gigabytes = cfg.chunks * CHUNK / 1e9

    def timed(side: str, op: str, tag: str, fn) -> None:
        started = time.process_time()
        results[f"{side}_{op}_{tag}"].append(fn())
        cpu[f"{side}_{op}"].append((time.process_time() - started) / gigabytes)
    for r in range(cfg.rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for threads, tag in ((1, "seq"), (cfg.threads, "par")):
            keys = benches["raw"].keys(r * 2 + (threads > 1))
            for side in order:
                os.sync()  # see bench.nvme_tier: discards of the last pass land on the next sync
                timed(side, "write", tag, lambda: benches[side].write(keys, threads))
            for side in order:
                os.sync()
                timed(side, "read", tag, lambda: benches[side].read(keys, threads))
            for side in order:
                benches[side].delete(keys)
        print(f"round {r + 1}/{cfg.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()) + " GB/s",
              flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    figures = []
    for op in ("write", "read"):
        for tag, label in (("seq", "seq"), ("par", f"{cfg.threads}threads")):
            value, base = med[f"encrypted_{op}_{tag}"], med[f"raw_{op}_{tag}"]
            figures.append({"name": f"nvme_encrypted_{op}_4MiB_{label}", "value": round(value, 3), "unit": "GB/s",
                            "baseline": f"nvme {op} without encryption", "baseline_value": round(base, 3),
                            "ratio": round(value / base, 3)})
    for op in ("write", "read"):
        value, base = statistics.median(cpu[f"encrypted_{op}"]), statistics.median(cpu[f"raw_{op}"])
        figures.append({"name": f"nvme_encrypted_{op}_cpu_per_GB", "value": round(value, 3), "unit": "CPU s/GB",
                        "baseline": f"nvme {op} without encryption", "baseline_value": round(base, 3),
                        "ratio": round(base / value, 3)})
    mode = "O_DIRECT" if benches["raw"].files.direct_io else "buffered, page cache dropped before reads"
    return figures, mode


def run_cipher(reps: int) -> list[dict]:
    """AES-256-GCM on one core, in memory: seal and open of one 4 MiB chunk, against memcpy."""
    cipher = ChunkCipher(os.urandom(32))
    src = np.frombuffer(os.urandom(CHUNK), np.uint8)
    dst = np.empty_like(src)
    out = np.empty_like(src)
    aad = associated_data(b"\0" * 16, "00000000bec40001", "bench", CHUNK, CHUNK, "")

    def best(fn) -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return CHUNK / min(times) / 1e9

    memcpy = best(lambda: np.copyto(dst, src))
    sealed: dict[str, tuple[bytes, bytes]] = {}

    def seal() -> None:
        sealed["x"] = cipher.seal_into("bench", aad, src.data, dst.data)

    seal_gbs = best(seal)
    open_gbs = best(lambda: cipher.open_into("bench", aad, *sealed["x"], dst.data, out.data))
    assert out.tobytes() == src.tobytes()
    return [{"name": f"aes_gcm_{name}_4MiB_1core", "value": round(v, 3), "unit": "GB/s", "baseline": "memcpy",
             "baseline_value": round(memcpy, 3), "ratio": round(v / memcpy, 3)}
            for name, v in (("seal", seal_gbs), ("open", open_gbs))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])

    def body(cfg: Config) -> list[dict]:
        figures, mode = run_tier(cfg)
        print(f"tierd I/O mode: {mode}; {cfg.chunks} x 4 MiB = {cfg.total_bytes / 2**20:.0f} MiB per pass and "
              f"side, {cfg.rounds} rounds, medians")
        return figures + run_cipher(reps=20 if args.quick else 50)

    return run_in_temp_dir(args, ".tierd-bench-encryption-", body)


if __name__ == "__main__":
    raise SystemExit(main())
