"""The NVMe tier as the store sees it: `LowerTier` coroutines over the blocking chunk files.

`NvmeChunkFiles` blocks on disk I/O (and on encoding, decoding, encryption and decryption, when
the tier has a codec or a cipher),
so every operation runs on this tier's own pool of `io_threads` threads, never on the event
loop. The pool is the tier's, not the store's: the store awaits this tier exactly as it awaits
the object tier, and the thread count is a property of the medium (how many requests an NVMe
device serves at once), set by `--io-threads`.
"""
from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from tierd.errors import InvalidArgumentError
from tierd.tiers.base import CopyHeader, FoundCallback, PrefixProbe, StoredRecord
from tierd.tiers.encoding import TierCodec
from tierd.tiers.nvme.files import NvmeChunkFiles

if TYPE_CHECKING:
    from tierd.layout import Layout

T = TypeVar("T")


class NvmeTier:
    """A local chunk directory behind the `tierd.tiers.base.LowerTier` interface.

    Errors, by operation: `write` raises InvalidArgumentError (a bad key, layout id, namespace
    or payload), CapacityError (the disk is full) or OSError (any other I/O error); no file of
    a failed write remains. `read_into` and `read_header` answer None for a missing, damaged or
    unreadable file and raise only InvalidArgumentError (bad arguments). `delete` raises
    InvalidArgumentError for a bad key and OSError if the file exists but cannot be removed.
    `scan` raises OSError if the directory cannot be listed. None raises ObjectTierUnavailable.
    """

    name = "nvme"
    shared = False
    url: str | None = None

    def __init__(self, files: NvmeChunkFiles, *, io_threads: int = 4) -> None:
        if not isinstance(io_threads, int) or isinstance(io_threads, bool) or io_threads < 1:
            raise InvalidArgumentError(f"io_threads {io_threads!r}: must be a positive integer")
        self.files = files
        self.io_threads = io_threads
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="tierd-io")

    # -- facts the daemon reads besides the interface ---------------------------------------

    @property
    def codec(self) -> TierCodec:
        """What this tier writes (calibration measures its speed)."""
        return self.files.codec

    @property
    def root(self) -> Path:
        """The chunk directory (start-up names it in its progress lines)."""
        return self.files.root

    @property
    def scanned(self) -> int:
        """Chunk files the running (or last) `scan` has read so far, for progress lines."""
        return self.files.scanned

    # -- LowerTier ----------------------------------------------------------------------------

    def use_layouts(self, layouts: Mapping[str, Layout]) -> None:
        self.files.codec.layouts = layouts

    def stored_bytes(self, payload_len: int) -> int:
        return self.files.file_bytes_for(payload_len)

    async def check(self) -> None:
        """Nothing to do: the directory was created (or refused with a ConfigError) when the
        chunk files were opened."""

    def retry_after(self) -> float:
        return 0.0  # a local disk is never "down for a while": its errors are per request

    async def write(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> int:
        return await self._run(self.files.write, key, layout_id, namespace, payload)

    async def read_into(self, key: bytes, dest: memoryview, *, layout_id: str, payload_len: int,
                        stored_bytes: int | None = None) -> CopyHeader | None:
        header = await self._run(self.files.read_into, key, dest, layout_id=layout_id, payload_len=payload_len)
        return None if header is None else header.copy_header()

    async def read_header(self, key: bytes) -> CopyHeader | None:
        header = await self._run(self.files.read_header, key)
        return None if header is None else header.copy_header()

    async def delete(self, key: bytes) -> int:
        return await self._run(self.files.delete, key)

    async def scan(self) -> list[StoredRecord]:
        return list(await self._run(self.files.scan))

    def prefix_probe(self, on_found: FoundCallback, *, budget: float) -> PrefixProbe | None:
        return None  # a local tier holds only what this node wrote, and the index knows all of it

    def stats(self) -> dict[str, Any]:
        cipher = self.files.cipher
        return {**self.files.codec.stats(), "encrypt_key_id": cipher.key_id.hex() if cipher is not None else None,
                "undecryptable": self.files.undecryptable}

    async def close(self) -> None:
        """Wait for the I/O in flight, then stop the threads (without blocking the loop)."""
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._pool.shutdown, wait=True))

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
