"""Access traces: the request streams that hit-rate curves are computed from.

Two formats, both read into the same `TraceRequest` stream:

- Mooncake JSONL (FAST'25 traces): one request per line with `timestamp` (ms from the start),
  `input_length` and `hash_ids`, one id per 512-token block, already chained (an id names the
  whole prefix up to its block), so ids are keys as they are.
- tierd's own Parquet access trace (`TRACE_SCHEMA`), written by `tierd.mrc.trace_recorder`: one
  row per chunk reference, so a trace taken on a live daemon can be replayed offline with the
  exact same keys and sizes the daemon saw.

Readers check the file up front (so a missing file fails at the call, not at the first
`next()`) and raise InvalidArgumentError naming the file and line or column on bad input.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tierd.errors import InvalidArgumentError

#: Tokens per block in the Mooncake traces.
MOONCAKE_BLOCK_TOKENS = 512

TRACE_FORMATS = ("mooncake", "parquet")

#: Operations a Parquet trace row can record.
TRACE_OPS = ("lookup", "get", "put")

#: tierd's access-trace schema: one row per chunk reference.
#: ts: seconds since the epoch; request_id: groups the rows of one call; op: lookup/get/put;
#: namespace: the key's namespace; key: the 16-byte chunk key; position: chunk index within
#: the request; size: chunk bytes; tier: where the chunk was found, null for a miss.
TRACE_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("namespace", pa.string(), nullable=False),
        pa.field("key", pa.binary(16), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("tier", pa.string(), nullable=True),
    ],
    metadata={b"tierd.trace.version": b"1"},
)

_REQUIRED_COLUMNS = ("ts", "request_id", "op", "key", "position", "size")


@dataclass(slots=True)
class TraceRequest:
    """One request: the chunk keys it referenced, in prefix order, and each chunk's size."""

    timestamp: float  # seconds: from the trace start (Mooncake) or since the epoch (Parquet)
    keys: list[Any]  # ints (Mooncake hash ids) or 16-byte keys (tierd traces)
    sizes: list[int]  # bytes per chunk (Mooncake: the block_bytes asked for)
    request_id: int | None = None
    op: str = "lookup"
    tiers: list[str | None] = field(default_factory=list)  # Parquet only: tier per chunk, None = miss


def _existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidArgumentError(f"trace {str(p)!r}: no such file; check the path")
    if not p.is_file():
        raise InvalidArgumentError(f"trace {str(p)!r}: not a regular file; pass a trace file")
    return p


def read_trace(path: str | Path, fmt: str, *, block_bytes: int = 1, ops: Iterable[str] = ("lookup",)) -> Iterator[TraceRequest]:
    """Requests from a trace in format `fmt` ('mooncake' or 'parquet')."""
    if fmt == "mooncake":
        return read_mooncake(path, block_bytes=block_bytes)
    if fmt == "parquet":
        return read_parquet(path, ops=ops)
    raise InvalidArgumentError(f"trace format {fmt!r}: use one of {', '.join(TRACE_FORMATS)}")


def read_mooncake(path: str | Path, *, block_bytes: int = 1) -> Iterator[TraceRequest]:
    """Requests of a Mooncake JSONL trace; each block weighs `block_bytes` (default 1, so
    byte-weighted curves equal block curves until a real KV block size is given)."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        raise InvalidArgumentError(f"block_bytes {block_bytes!r}: use a positive number of bytes per block")
    p = _existing_file(path)
    return _mooncake_rows(p, block_bytes)


def _mooncake_rows(path: Path, block_bytes: int) -> Iterator[TraceRequest]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidArgumentError(f"{where}: not valid JSON ({exc}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise InvalidArgumentError(f"{where}: expected a JSON object with 'hash_ids'; fix or remove the line")
            ids = obj.get("hash_ids")
            if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < 1 << 63 for i in ids):
                raise InvalidArgumentError(f"{where}: 'hash_ids' must be a list of non-negative integers, got {str(ids)[:60]}")
            ts = obj.get("timestamp", 0)
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
                raise InvalidArgumentError(f"{where}: 'timestamp' must be a number of milliseconds, got {ts!r}")
            yield TraceRequest(timestamp=ts / 1000.0, keys=ids, sizes=[block_bytes] * len(ids), request_id=lineno)


def read_parquet(path: str | Path, *, ops: Iterable[str] = ("lookup",)) -> Iterator[TraceRequest]:
    """Requests of a tierd Parquet access trace, keeping rows whose op is in `ops`.

    Lookups are the reference stream an LRU sees (every chunk a request asks about); gets and
    puts follow from them, so replaying all three would count chunks two or three times.
    Rows of one request are contiguous and in position order (the recorder writes them so);
    a change of request_id or op, or a position that does not increase, starts a new request.
    """
    wanted = set(ops)
    bad = wanted - set(TRACE_OPS)
    if bad or not wanted:
        raise InvalidArgumentError(f"ops {sorted(wanted)!r}: choose from {', '.join(TRACE_OPS)}")
    p = _existing_file(path)
    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgumentError(f"trace {str(p)!r}: not a Parquet file ({exc}); pass --format mooncake for JSONL") from None
    missing = [c for c in _REQUIRED_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise InvalidArgumentError(f"trace {str(p)!r}: missing column(s) {', '.join(missing)}; write traces with tierd.mrc.trace_recorder")
    has_tier = "tier" in pf.schema_arrow.names
    return _parquet_rows(pf, wanted, has_tier)


def _parquet_rows(pf: pq.ParquetFile, wanted: set[str], has_tier: bool) -> Iterator[TraceRequest]:
    columns = list(_REQUIRED_COLUMNS) + (["tier"] if has_tier else [])
    current: TraceRequest | None = None
    last_position = -1
    for batch in pf.iter_batches(columns=columns, batch_size=65536):
        cols = {name: batch.column(name).to_pylist() for name in columns}
        tiers = cols["tier"] if has_tier else [None] * batch.num_rows
        for ts, rid, op, key, pos, size, tier in zip(cols["ts"], cols["request_id"], cols["op"], cols["key"],
                                                     cols["position"], cols["size"], tiers):
            if op not in wanted:
                continue
            if current is None or rid != current.request_id or op != current.op or pos <= last_position:
                if current is not None:
                    yield current
                current = TraceRequest(timestamp=ts, keys=[], sizes=[], request_id=rid, op=op, tiers=[])
            current.keys.append(key)
            current.sizes.append(size)
            current.tiers.append(tier)
            last_position = pos
    if current is not None:
        yield current
