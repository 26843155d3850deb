"""KV codecs: encode/decode GB/s against memcpy, compression ratio, and what each codec does to
the effective load bandwidth of an NVMe tier.

The chunk is one bf16 chunk of a 32-layer, 8-KV-head, head-dim-128 model at 256 tokens (32 MiB):
random-normal K and V with 4 key channels per head scaled x20 (the outliers real keys have).
Random-normal bf16 is close to the worst case for lossless codecs: the low byte of every value
is noise and only the exponent carries redundancy, so zstd gets ~1.3-1.5x at most; uniformly
random bits (one extra row) do not compress at all. Real KV has more structure than this; the
quantised codecs' ratio does not depend on the data.

Throughputs are GB/s of raw (uncompressed) chunk bytes, one Python thread calling the codec,
torch with `--threads` intra-op threads (default 1) and zstd with one. One, because a tier runs
codecs on its I/O threads, one chunk each, and because on this shared 2-core machine torch's
spinning OpenMP workers made 2 threads 2-15x slower than 1 for the quantised codecs (measured
2026-12-01: int8k-tq3v encode 0.2 s with 1 thread, 0.9-3.6 s with 2 while others ran tests).
Rounds go over every codec in turn and each figure is the median round, so load from other
users of a shared machine spreads over all codecs. The baseline is np.copyto of the same 32 MiB
in the same run. Encode includes allocating the returned blob (page faults), as a tier's
demotion would.

NVMe read bandwidth is measured in the same run: a 64 MiB file of the same bytes is written to
`--dir`, fdatasync'ed, dropped from the page cache (fadvise DONTNEED) and read back in 4 MiB
reads with O_DIRECT into an aligned buffer. Where the filesystem refuses O_DIRECT it falls back
to plain reads after the fadvise and the output says so (then the figure can include page-cache
hits if the kernel ignored the advice). It is one sequential reader, queue depth 1: a lower
bound for a multi-threaded tier.

Effective load bandwidth of raw bytes through the tier with a codec, read and decode not
overlapped: 1 / (1 / (read_bw * ratio) + 1 / decode_bw); without a codec it is read_bw. That
is the model; the tier itself is also measured: `NvmeChunkFiles` with each codec (`--nvme-codec`)
writes the chunk under several keys in `--dir` and reads them all back into an aligned buffer
(verified file reads with O_DIRECT where the filesystem allows, then decoding), against the same
tier storing raw chunks in the same run (`nvme_tier_load_*` figures).

    python -m bench.codecs [--quick] [--dir DIR] [--repeats N] [--threads 1]
"""
from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # `python bench/codecs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.figures import best_seconds, figure  # noqa: E402
from tierd.codecs import get_codec  # noqa: E402
from tierd.codecs.sample import synthetic_kv  # noqa: E402
from tierd.layout import Layout  # noqa: E402
from tierd.tiers.nvme.files import NvmeChunkFiles  # noqa: E402

LAYOUT = Layout("bench-8b-like", "bfloat16", num_layers=32, num_kv_heads=8, head_dim=128, chunk_tokens=256)
QUICK_SPECS = ("raw", "zstd:1", "zstd:3", "zstd-shuffle:1", "zstd-shuffle:3", "int8k-tq3v", "int8k-tq4v")
FULL_SPECS = QUICK_SPECS + ("zstd:9", "zstd-shuffle:9", "zstd-shuffle:19")
READ_UNIT = 4 * 1024 * 1024
FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CodecResult:
    spec: str
    encode_s: float
    decode_s: float
    encoded_bytes: int
    values_rel_mse: float  # 0 for lossless codecs (checked byte-exact)

    @property
    def ratio(self) -> float:
        return LAYOUT.chunk_bytes / self.encoded_bytes


def kv_chunk(seed: int = 0) -> bytes:
    """Canonical bf16 bytes of random-normal KV with 4 x20 outlier key channels per head."""
    return synthetic_kv(LAYOUT, seed)


def memcpy_seconds(payload: bytes, repeats: int) -> float:
    src = np.frombuffer(payload, dtype=np.uint8)
    dst = np.empty_like(src)
    return best_seconds(lambda: np.copyto(dst, src), repeats=repeats)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_codecs(specs: tuple[str, ...], payload: bytes, repeats: int) -> list[CodecResult]:
    """Rounds over all codecs (encode then decode of each), so a noisy neighbour on this shared
    machine hits every codec alike; each figure is the median round."""
    codecs = [get_codec(spec) for spec in specs]
    blobs = [codec.encode(payload, LAYOUT) for codec in codecs]  # warm-up and the blob to decode
    outs = [bytearray(LAYOUT.chunk_bytes) for _ in codecs]
    enc: list[list[float]] = [[] for _ in codecs]
    dec: list[list[float]] = [[] for _ in codecs]
    for _ in range(repeats):
        for i, codec in enumerate(codecs):
            enc[i].append(timed(lambda: codec.encode(payload, LAYOUT)))
            dec[i].append(timed(lambda: codec.decode(blobs[i], LAYOUT, memoryview(outs[i]))))
    results = []
    for codec, blob, out, e, d in zip(codecs, blobs, outs, enc, dec):
        if codec.lossless:
            if bytes(out) != payload:
                raise SystemExit(f"{codec.name}: round trip is not byte-exact")
            rel = 0.0
        else:
            want, got = _values(payload), _values(out)
            rel = float(((got - want) ** 2).sum() / (want ** 2).sum())
        results.append(CodecResult(codec.name, statistics.median(e), statistics.median(d), len(blob), rel))
    return results


def _values(data: bytes | bytearray) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).view(LAYOUT.chunk_shape)[:, 1].float()


def nvme_read_bandwidth(directory: Path, payload: bytes, repeats: int) -> tuple[float, str]:
    """GB/s of sequential 4 MiB reads of a 64 MiB file of `payload` bytes, and how it was read."""
    path = directory / f"tierd-bench-codecs-{os.getpid()}.bin"
    buf = mmap.mmap(-1, READ_UNIT)  # page-aligned, as O_DIRECT needs
    try:
        with open(path, "wb") as f:
            for _ in range(FILE_BYTES // len(payload)):
                f.write(payload)
            f.flush()
            os.fdatasync(f.fileno())
        mode = "O_DIRECT"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            os.readv(fd, [buf])
            os.close(fd)
        except (OSError, AttributeError):
            mode = "buffered after fadvise(DONTNEED) (no O_DIRECT on this filesystem)"

        def read_all() -> None:
            flags = os.O_RDONLY | (os.O_DIRECT if mode == "O_DIRECT" else 0)
            fd = os.open(path, flags)
            try:
                if mode != "O_DIRECT":
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total = 0
                while (n := os.readv(fd, [buf])) > 0:
                    total += n
                if total != FILE_BYTES:
                    raise SystemExit(f"read {total} bytes of {FILE_BYTES} from {path}")
            finally:
                os.close(fd)

        seconds = best_seconds(read_all, repeats=repeats)
        return FILE_BYTES / seconds / 1e9, mode
    finally:
        buf.close()
        path.unlink(missing_ok=True)


def nvme_tier_load(directory: Path, specs: tuple[str, ...], payload: bytes, copies: int,
                   repeats: int) -> dict[str, float]:
    """GB/s of raw chunk bytes read back through the NVMe tier (verify + decode) per codec spec."""
    dest = mmap.mmap(-1, LAYOUT.chunk_bytes)
    out: dict[str, float] = {}
    try:
        for spec in specs:
            root = Path(tempfile.mkdtemp(prefix=f"tierd-bench-tier-{spec.replace(':', '_')}-", dir=directory))
            try:
                tier = NvmeChunkFiles(root, codec=spec)
                tier.codec.layouts = {LAYOUT.layout_id: LAYOUT}
                keys = [i.to_bytes(16, "little") for i in range(1, copies + 1)]
                for key in keys:
                    tier.write(key, LAYOUT.layout_id, "bench", payload)

                def read_all() -> None:
                    for key in keys:
                        if not tier.read_into(key, dest, layout_id=LAYOUT.layout_id, payload_len=LAYOUT.chunk_bytes):
                            raise SystemExit(f"{spec}: chunk {key.hex()} did not read back")

                out[spec] = copies * LAYOUT.chunk_bytes / best_seconds(read_all, repeats=repeats) / 1e9
            finally:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        dest.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer codecs and repeats: under a minute")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="directory on the NVMe device to measure (default: the temp dir)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per figure (default 3, 5 without --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    specs = QUICK_SPECS if args.quick else FULL_SPECS

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = kv_chunk()
    print(f"# bench.codecs {started}: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), chunk {LAYOUT.chunk_bytes / 2**20:.0f} MiB bf16 (32 layers, 8 KV heads, head_dim 128, "
          f"256 tokens), median of {repeats}")
    memcpy_gbs = LAYOUT.chunk_bytes / memcpy_seconds(payload, repeats) / 1e9
    read_gbs, read_mode = nvme_read_bandwidth(args.dir, payload, repeats)
    print(f"# memcpy {memcpy_gbs:.2f} GB/s; NVMe read {read_gbs:.2f} GB/s from {args.dir} ({read_mode}, 4 MiB reads, "
          "one thread)")

    results = measure_codecs(specs, payload, repeats)
    uniform = np.random.default_rng(0).integers(0, 256, LAYOUT.chunk_bytes, dtype=np.uint8).tobytes()
    uniform_ratio = LAYOUT.chunk_bytes / len(get_codec("zstd-shuffle:3").encode(uniform, LAYOUT))

    print(f"{'codec':<18}{'ratio':>7}{'enc GB/s':>10}{'dec GB/s':>10}{'eff. load GB/s':>16}{'values rel MSE':>16}")
    print(f"{'(no codec)':<18}{1.0:>7.3f}{'-':>10}{'-':>10}{read_gbs:>16.3f}{'-':>16}")
    effective = {}
    for r in results:
        dec_gbs = LAYOUT.chunk_bytes / r.decode_s / 1e9
        effective[r.spec] = 1.0 / (1.0 / (read_gbs * r.ratio) + 1.0 / dec_gbs)
        print(f"{r.spec:<18}{r.ratio:>7.3f}{LAYOUT.chunk_bytes / r.encode_s / 1e9:>10.3f}{dec_gbs:>10.3f}"
              f"{effective[r.spec]:>16.3f}{r.values_rel_mse:>16.4f}")
    print(f"# zstd-shuffle:3 on uniformly random bytes (not KV): ratio {uniform_ratio:.3f} -- random bits do not "
          "compress")

    for r in results:
        name = r.spec.replace(":", "_")
        figure(f"codec_encode_{name}", LAYOUT.chunk_bytes / r.encode_s / 1e9, "GB/s", "memcpy", memcpy_gbs)
        figure(f"codec_decode_{name}", LAYOUT.chunk_bytes / r.decode_s / 1e9, "GB/s", "memcpy", memcpy_gbs)
        figure(f"codec_ratio_{name}", r.ratio, "x", "raw_bytes", 1.0)
        figure(f"nvme_effective_load_{name}", effective[r.spec], "GB/s", "nvme_read_no_codec", read_gbs,
               read_mode=read_mode)
    figure("codec_ratio_zstd-shuffle_3_uniform_random", uniform_ratio, "x", "raw_bytes", 1.0)

    tier_specs = ("raw", "zstd-shuffle:1", "int8k-tq3v", "int8k-tq4v")
    tier_gbs = nvme_tier_load(args.dir, tier_specs, payload, copies=2 if args.quick else 4, repeats=repeats)
    print(f"# NVMe tier (NvmeChunkFiles) load, raw GB/s read + verified + decoded: "
          + ", ".join(f"{s} {g:.3f}" for s, g in tier_gbs.items()))
    for spec, gbs in tier_gbs.items():
        if spec != "raw":
            figure(f"nvme_tier_load_{spec.replace(':', '_')}", gbs, "GB/s", "nvme_tier_raw", tier_gbs["raw"])
    figure("nvme_tier_load_raw", tier_gbs["raw"], "GB/s", "nvme_read_no_codec", read_gbs, read_mode=read_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
