"""A lower tier's codec: chunks are encoded on their way down and decoded on their way back up.

The NVMe and object tiers each hold one `TierCodec`, configured per tier (`--nvme-codec`,
`--object-codec`; DRAM is always raw because clients map it). A tier stores either a chunk's
raw canonical bytes or a codec blob (`tierd.codecs`), and names which in its own file or object
header (the codec spec, "" for raw). Reading trusts that name, not the tier's configuration, so
a tier whose codec was changed still reads what it holds, and a node reads what another node
wrote to the shared bucket with another codec.

Raw is stored instead of a blob when encoding gains nothing: when the codec cannot encode the
layout (the quantised codecs need a power-of-two head_dim and a 16- or 32-bit float dtype),
when the layout is not registered in this daemon (calibration chunks), or when the blob is not
smaller than the chunk. So what a tier stores is never larger than the raw chunk, and the
store's capacity accounting can reserve the raw size before a write and settle the real size
after it.

Encoding and decoding are CPU work of tens of milliseconds per chunk; callers run them on
worker threads (the NVMe tier's I/O threads, the object tier's executor), never on the loop.
The quantised codecs can run their torch work on a GPU instead (`--codec-device`: "auto" picks
CUDA where torch sees a device, "cpu", or "cuda"); the chunk still comes from and goes to host
memory, so the GPU saves the arithmetic, not the copies. The lossless codecs always run on the
CPU.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from tierd.codecs import Buffer, Codec, codec_for_blob, get_codec
from tierd.errors import CodecError, UnknownLayoutError
from tierd.layout import Layout

log = logging.getLogger(__name__)

#: Longest codec spec a tier header holds ("zstd-shuffle:-7" is 15 bytes).
MAX_CODEC_NAME = 16


@dataclass(slots=True)
class CodecCounters:
    """What a tier's codec did, for `stat` and the cost model (ratio, decode throughput)."""

    encoded: int = 0
    stored_raw: int = 0  # chunks written raw although a codec is configured (see module docstring)
    encode_raw_bytes: int = 0
    encode_stored_bytes: int = 0
    encode_seconds: float = 0.0
    decoded: int = 0
    decode_raw_bytes: int = 0
    decode_seconds: float = 0.0
    decode_failures: int = 0


class TierCodec:
    """One tier's codec plus the layouts it needs to encode and decode chunks.

    `layouts` is the store's registry of layouts (a live mapping the store hands over when it
    adopts the tier); until then, or for a layout id it does not hold, chunks are written raw and
    encoded chunks cannot be decoded (`UnknownLayoutError`: not corruption, the chunk is kept).
    Thread-safe: encode/decode run on any worker thread.
    """

    def __init__(self, spec: str = "raw", *, device: str = "auto") -> None:
        self.device = _codec_device(spec, device)
        codec = get_codec(spec, device=self.device)
        self.codec: Codec | None = None if codec.name == "raw" else codec
        self.spec = codec.name
        if len(self.spec.encode("ascii")) > MAX_CODEC_NAME:
            raise CodecError(f"codec {spec!r}: its name is longer than {MAX_CODEC_NAME} bytes")
        self.layouts: Mapping[str, Layout] = {}
        self.counters = CodecCounters()
        self._lock = threading.Lock()
        self._refused: set[str] = set()

    @property
    def lossless(self) -> bool:
        return self.codec is None or self.codec.lossless

    def encode(self, payload: memoryview, layout_id: str) -> tuple[Buffer, str]:
        """What to store for this raw chunk: (bytes, codec spec to record; "" = the raw bytes)."""
        codec = self.codec
        if codec is None:
            return payload, ""
        layout = self.layouts.get(layout_id)
        if layout is None or layout_id in self._refused:
            self._count(stored_raw=1)
            return payload, ""
        started = time.perf_counter()
        try:
            blob = codec.encode(payload, layout)
        except CodecError as exc:
            with self._lock:
                self._refused.add(layout_id)
            log.warning("codec %s cannot encode layout %s (%s): its chunks are stored raw", codec.name,
                        layout_id, exc)
            self._count(stored_raw=1)
            return payload, ""
        if len(blob) >= len(payload):  # nothing gained: raw is smaller and exact
            self._count(stored_raw=1)
            return payload, ""
        self._count(encoded=1, encode_raw_bytes=len(payload), encode_stored_bytes=len(blob),
                    encode_seconds=time.perf_counter() - started)
        return blob, codec.name

    def decode_into(self, blob: Buffer, codec_name: str, layout_id: str, dest: memoryview) -> None:
        """Decode a blob the tier's header says `codec_name` wrote into `dest` (the raw chunk).

        Raises CodecError when the blob is not that codec's encoding of a chunk of this layout
        (corrupt: a miss, delete it), UnknownLayoutError when the layout is not registered here
        (a miss for now, keep it)."""
        layout = self.layouts.get(layout_id)
        if layout is None:
            raise UnknownLayoutError(f"layout {layout_id} is not registered in this daemon: cannot decode a "
                                     f"{codec_name} chunk of it")
        started = time.perf_counter()
        try:
            codec = codec_for_blob(blob, device=self.device)
            if codec.name != codec_name:
                raise CodecError(f"tier header says codec {codec_name!r}, the blob says {codec.name!r}")
            codec.decode(blob, layout, dest)
        except CodecError:
            self._count(decode_failures=1)
            raise
        self._count(decoded=1, decode_raw_bytes=layout.chunk_bytes, decode_seconds=time.perf_counter() - started)

    def _count(self, **deltas: Any) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    def ratio(self) -> float | None:
        """Raw bytes per stored byte of what this tier encoded so far; None before the first."""
        c = self.counters
        return c.encode_raw_bytes / c.encode_stored_bytes if c.encode_stored_bytes else None

    def decode_bandwidth(self) -> float | None:
        """Raw bytes decoded per second of decoding; None before the first decode."""
        c = self.counters
        return c.decode_raw_bytes / c.decode_seconds if c.decode_seconds > 0 else None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = asdict(self.counters)
        return {"codec": self.spec, "codec_device": self.device, "codec_lossless": self.lossless,
                "codec_ratio": self.ratio(),
                "codec_decode_bytes_per_s": self.decode_bandwidth(),
                **{f"codec_{k}": v for k, v in counters.items()}}


DEVICES = ("auto", "cpu", "cuda")


def _codec_device(spec: str, device: str) -> str:
    """Where a tier's quantised codec runs. Only a quantised spec imports torch to look for CUDA
    (a daemon with raw or zstd tiers never pays for that import)."""
    if device not in DEVICES:
        raise CodecError(f"codec device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cpu" or not str(spec).strip().lower().startswith("int8k"):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise CodecError(f"codec device 'cuda' for {spec!r}: torch sees no CUDA device here "
                         f"(torch {torch.__version__}); use --codec-device auto or cpu")
    return "cpu"
