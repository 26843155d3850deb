"""Record the daemon's chunk references to a Parquet access trace (tierd.mrc.traces.TRACE_SCHEMA).

A recorded trace replays offline through `tierd mrc --format parquet` with the keys, sizes and
tiers the daemon really saw, which is what makes a capacity recommendation trustworthy.
Rows are buffered in memory and written as one row group every `row_group_rows` rows, so the
cost on the request path is a few list appends; the flush itself is synchronous (tens of
milliseconds per 64k rows), so a busy daemon should call `record` from a background queue.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tierd.errors import InvalidArgumentError
from tierd.mrc.traces import TRACE_OPS, TRACE_SCHEMA

KEY_BYTES = 16


class TraceRecorder:
    """Appends rows to one Parquet file; `close()` (or the context manager) finishes it.

    A lock guards the buffer, so calls from one event loop, or a few threads, interleave
    whole requests and never half rows. Invalid input raises InvalidArgumentError before
    anything is buffered. Request ids default to a counter local to this recorder.
    """

    def __init__(self, path: str | Path, *, row_group_rows: int = 65536, clock: Callable[[], float] = time.time) -> None:
        if isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) or row_group_rows < 1:
            raise InvalidArgumentError(f"row_group_rows {row_group_rows!r}: use a positive integer, e.g. 65536")
        self._path = Path(path)
        self._row_group_rows = row_group_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._columns: dict[str, list] = {f.name: [] for f in TRACE_SCHEMA}
        self._buffered = 0
        self._written = 0
        self._next_request_id = 0
        try:
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._path, TRACE_SCHEMA, compression="zstd")
        except OSError as exc:
            raise InvalidArgumentError(f"trace {str(self._path)!r}: cannot create ({exc}); check the directory") from None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def rows_written(self) -> int:
        """Rows flushed to the file so far (buffered rows not included)."""
        return self._written

    def record(self, op: str, namespace: str, keys: Sequence[bytes], sizes: Sequence[int] | int,
               tiers: Sequence[str | None] | None = None, request_id: int | None = None, *,
               start_position: int = 0) -> int:
        """Buffer one row per key; return the request id used.

        `sizes` is one size per key or one size for all; `tiers` one tier name (None = miss)
        per key, or None for all misses; `start_position` is the first key's chunk index.
        """
        n = len(keys)
        if op not in TRACE_OPS:
            raise InvalidArgumentError(f"op {op!r}: use one of {', '.join(TRACE_OPS)}")
        if not isinstance(namespace, str):
            raise InvalidArgumentError(f"namespace {namespace!r}: use a string")
        for k in keys:
            if not isinstance(k, bytes) or len(k) != KEY_BYTES:
                raise InvalidArgumentError(f"key {k!r}: trace keys are {KEY_BYTES}-byte chunk keys")
        size_list = [sizes] * n if isinstance(sizes, int) else list(sizes)
        if len(size_list) != n:
            raise InvalidArgumentError(f"{len(size_list)} sizes for {n} keys: pass one size per key or one for all")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in size_list):
            raise InvalidArgumentError(f"sizes {size_list[:8]!r}: use non-negative integers (bytes)")
        tier_list = [None] * n if tiers is None else list(tiers)
        if len(tier_list) != n or any(t is not None and not isinstance(t, str) for t in tier_list):
            raise InvalidArgumentError(f"tiers {tier_list[:8]!r}: pass one tier name or None per key")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int)):
            raise InvalidArgumentError(f"request_id {request_id!r}: use an integer or None")
        if isinstance(start_position, bool) or not isinstance(start_position, int) or not 0 <= start_position < 1 << 31:
            raise InvalidArgumentError(f"start_position {start_position!r}: use a non-negative 32-bit integer")
        with self._lock:
            if self._writer is None:
                raise InvalidArgumentError(f"trace {str(self._path)!r} is closed: open a new TraceRecorder")
            if request_id is None:
                request_id = self._next_request_id
            self._next_request_id = max(self._next_request_id, request_id + 1)
            ts = self._clock()
            cols = self._columns
            cols["ts"].extend([ts] * n)
            cols["request_id"].extend([request_id] * n)
            cols["op"].extend([op] * n)
            cols["namespace"].extend([namespace] * n)
            cols["key"].extend(keys)
            cols["position"].extend(range(start_position, start_position + n))
            cols["size"].extend(size_list)
            cols["tier"].extend(tier_list)
            self._buffered += n
            if self._buffered >= self._row_group_rows:
                self._flush_locked()
        return request_id

    def flush(self) -> None:
        """Write buffered rows as a row group now."""
        with self._lock:
            if self._writer is not None:
                self._flush_locked()

    def close(self) -> None:
        """Flush and finish the file (idempotent); a closed recorder refuses new rows."""
        with self._lock:
            if self._writer is None:
                return
            self._flush_locked()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_locked(self) -> None:
        if not self._buffered or self._writer is None:
            return
        table = pa.Table.from_pydict(self._columns, schema=TRACE_SCHEMA)
        self._writer.write_table(table, row_group_size=max(self._buffered, 1))
        self._written += self._buffered
        self._buffered = 0
        self._columns = {f.name: [] for f in TRACE_SCHEMA}
