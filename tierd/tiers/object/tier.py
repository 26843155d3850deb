"""The object tier (L4): chunks as immutable objects in an S3-compatible bucket shared by all nodes.

Unlike the NVMe tier this one is asynchronous by nature (requests run on the daemon's event
loop, many at once) and *shared*: other nodes write to the same prefix, so the local index
never knows all of it. The store therefore asks it about keys it has not seen (its prefix
probe, `tierd.tiers.object.probe`), counts only this node's own writes against `--object`, and
never rebuilds an index by listing the bucket.

Every call has a deadline, obstore retries transient errors with backoff, and a circuit
breaker stops calling a store that keeps failing (calls then fail at once with
`ObjectTierUnavailable`), probing it again after a cooldown. What a read returns is verified
(header, size, xxh3 checksum): a bad object is a miss and is deleted, never data.

With a codec (`--object-codec`, see `tierd.tiers.encoding`) objects hold the encoded chunk;
encoding and decoding run in the loop's default thread pool, off the event loop. An object's
size is then not known from its key's layout: the store passes the size it saw (its write, a
lookup's HEAD) as a hint, and a read without a right hint learns the size from the header.

With a cipher (`--encrypt-key-file`, `tierd.tiers.crypto`) objects are encrypted after the
codec, in the same thread pool. An object that fails authentication is deleted like any bad
object; one this node's key cannot read (another key's, one encrypted while this node has no
key, or a plaintext one while it has a key) is a miss but is left in the bucket: nodes that
share a bucket may be configured differently, and one misconfigured node must not delete what
the others can read.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, TypeVar

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError

from tierd.errors import CodecError, ObjectTierUnavailable, UnknownLayoutError
from tierd.tiers.base import CopyHeader, FoundCallback, PrefixProbe, StoredRecord
from tierd.tiers.crypto import AuthenticationFailed, ChunkCipher, unreadable_reason
from tierd.tiers.encoding import TierCodec
from tierd.tiers.header import associated_data
from tierd.tiers.object.breaker import CircuitBreaker
from tierd.tiers.object.bucket import check_bucket, first_line, open_store, past_the_end, unsupported_condition
from tierd.tiers.object.format import (
    HEADER_BYTES,
    BadObject,
    ObjectHeader,
    check_header,
    checksum,
    object_path,
    pack_header,
    parse_header,
)
from tierd.tiers.object.probe import SharedTierProbe

if TYPE_CHECKING:
    from tierd.layout import Layout

log = logging.getLogger(__name__)

T = TypeVar("T")


class ObjectTier:
    """Chunk objects under one store prefix, behind the `tierd.tiers.base.LowerTier` interface.
    Its coroutines run on the caller's event loop.

    Errors, by operation: `check` raises ConfigError (a missing bucket, refused credentials).
    `write` raises ObjectTierUnavailable (the store does not answer, or the circuit is open) and
    InvalidArgumentError (a key, layout id, namespace or node id the header cannot hold).
    `read_into` and `read_header` raise ObjectTierUnavailable and otherwise answer None for a
    missing or bad object. `delete` and `scan` raise nothing (a delete the store does not take
    is logged and frees 0 bytes).
    """

    name = "object"
    shared = True  # other nodes write here too: see the module docstring

    def __init__(self, url: str, *, node: str, timeout: float = 5.0, part_bytes: int = 8 << 20,
                 concurrency: int = 8, env: Mapping[str, str] | None = None, store: Any = None,
                 codec: str | TierCodec = "raw", cipher: ChunkCipher | None = None,
                 lookup_strategy: str = "bisect") -> None:
        self.url = url
        #: How its prefix probe searches the bucket (`tierd.tiers.object.search`): bisect or walk.
        self.lookup_strategy = lookup_strategy
        self.codec = codec if isinstance(codec, TierCodec) else TierCodec(codec)
        self.cipher = cipher
        self.node = node
        self.timeout = timeout
        self.part_bytes = part_bytes
        self.concurrency = concurrency
        self.store = store if store is not None else open_store(url, env=env, timeout=timeout)
        self.breaker = CircuitBreaker(f"object tier {url}")
        self.counters = {"puts": 0, "put_skipped_existing": 0, "gets": 0, "probes": 0, "probe_found": 0,
                         "errors": 0, "timeouts": 0, "corrupt_deleted": 0, "undecryptable": 0}
        #: Uploads are conditional PUTs (If-None-Match: *): one request, and the store refuses a
        #: key that exists. Turned off for good if this store rejects the header as unsupported;
        #: uploads then ask with a HEAD first.
        self.conditional_put = True

    # ------------------------------------------------------------ LowerTier: facts and reports

    def use_layouts(self, layouts: Mapping[str, Layout]) -> None:
        self.codec.layouts = layouts

    def stored_bytes(self, payload_len: int) -> int:
        return HEADER_BYTES + payload_len

    def retry_after(self) -> float:
        return self.breaker.seconds_until_retry()

    async def scan(self) -> list[StoredRecord]:
        """Nothing: a shared bucket is never listed at start (it may hold millions of other
        nodes' objects); the store learns of objects through lookups and its own writes."""
        return []

    def prefix_probe(self, on_found: FoundCallback, *, budget: float) -> PrefixProbe:
        return SharedTierProbe(self, on_found, budget=budget, strategy=self.lookup_strategy)

    def stats(self) -> dict[str, Any]:
        return {**self.codec.stats(), **self.counters, "breaker": self.breaker.state.value,
                "encrypt_key_id": self.cipher.key_id.hex() if self.cipher is not None else None,
                "breaker_opened": self.breaker.opened, "node": self.node, "url": self.url}

    async def close(self) -> None:
        """Nothing to release: obstore's stores hold no connection that needs closing."""

    # ------------------------------------------------------------ calls with deadline and breaker

    async def _call(self, what: str, make: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run one store request under the deadline and the breaker. NotFoundError passes through
        (an answer, not a failure); anything else counts against the breaker and becomes
        ObjectTierUnavailable."""
        if not self.breaker.allow():
            raise ObjectTierUnavailable(
                f"{what}: object store {self.url} is not answering (circuit open, retry in "
                f"{self.breaker.seconds_until_retry():.1f}s)")
        try:
            result = await asyncio.wait_for(make(), timeout if timeout is not None else self.timeout)
        except (FileNotFoundError, NotFoundError, AlreadyExistsError):
            self.breaker.success()
            raise
        except asyncio.TimeoutError:
            self.counters["timeouts"] += 1
            self.breaker.failure()
            raise ObjectTierUnavailable(f"{what}: no answer from {self.url} within {self.timeout}s") from None
        except Exception as exc:
            if past_the_end(exc):  # an answer about the object, not a failing store
                self.breaker.success()
                raise _PastEnd(f"{what}: {first_line(exc)}") from None
            self.counters["errors"] += 1
            self.breaker.failure()
            raise ObjectTierUnavailable(f"{what}: {first_line(exc)}") from None
        self.breaker.success()
        return result

    async def check(self) -> None:
        """At start: a missing bucket or credentials the store refuses are configuration errors;
        a store that does not answer is not (the tier starts with its circuit open and recovers)."""
        unreachable = await check_bucket(self.store, self.url, self.timeout)
        if unreachable is not None:
            log.warning("object store %s does not answer (%s); starting with local tiers only, retrying in the "
                        "background", self.url, first_line(unreachable))
            for _ in range(self.breaker.threshold):
                self.breaker.failure()

    # ------------------------------------------------------------ chunk operations

    async def write(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> int:
        """Upload a chunk unless it is already there. Returns the bytes this call wrote, or 0 when
        another writer got there first (objects are content-addressed: the same key is the same
        chunk, whatever codec stored it).

        One conditional PUT (If-None-Match: *, which S3, MinIO and SeaweedFS honour): the store
        itself refuses a key that exists, with no HEAD round trip before every upload. A store
        that rejects the condition as unsupported gets HEAD-then-PUT from then on; one that
        silently ignores it overwrites the object with the same chunk."""
        path = object_path(key)
        if not self.conditional_put and await self._exists(path):
            self.counters["put_skipped_existing"] += 1
            return 0
        if self.codec.codec is not None or self.cipher is not None:
            header, stored = await asyncio.get_running_loop().run_in_executor(
                None, self._encode, key, layout_id, namespace, payload)
        else:
            header, stored = self._encode(key, layout_id, namespace, payload)
        total = HEADER_BYTES + len(stored)
        multipart = total > self.part_bytes
        body: Any = [header, stored] if multipart else header + bytes(stored)
        while True:
            mode = "create" if self.conditional_put else "overwrite"
            try:
                await self._call(
                    f"put {path}",
                    lambda: obstore.put_async(self.store, path, body, mode=mode, use_multipart=multipart,
                                              chunk_size=self.part_bytes, max_concurrency=self.concurrency),
                    timeout=self._timeout_for(total),
                )
            except AlreadyExistsError:
                self.counters["put_skipped_existing"] += 1
                return 0
            except ObjectTierUnavailable as exc:
                if mode == "create" and unsupported_condition(exc):
                    log.warning("tierd: %s does not support conditional PUTs (%s); uploads ask with a HEAD first",
                                self.url, exc)
                    self.conditional_put = False
                    if await self._exists(path):
                        self.counters["put_skipped_existing"] += 1
                        return 0
                    continue
                raise
            self.counters["puts"] += 1
            return total

    def _encode(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> tuple[bytes, memoryview]:
        """(header, stored bytes) of a chunk's object: encoded by the codec, then encrypted.
        CPU work: runs in the thread pool when there is a codec or a cipher."""
        raw_len = len(payload)
        stored: Any = payload
        codec = ""
        if self.codec.codec is not None:
            stored, codec = self.codec.encode(payload, layout_id)
        stored = memoryview(stored).cast("B")
        key_id = nonce = tag = b""
        if self.cipher is not None:  # a buffer of its own: the upload holds it across awaits
            sealed = memoryview(bytearray(len(stored)))
            nonce, tag = self.cipher.seal_into(
                namespace, associated_data(key, layout_id, namespace, raw_len, len(stored), codec), stored, sealed)
            key_id, stored = self.cipher.key_id, sealed
        header = pack_header(ObjectHeader(key, layout_id, namespace, raw_len, checksum(stored), time.time(),
                                          stored_len=len(stored), codec=codec, node=self.node,
                                          key_id=key_id, nonce=nonce, tag=tag))
        return header, stored

    async def _exists(self, path: str) -> bool:
        """Whether a whole-header object is at `path` (smaller ones are damaged: overwritten)."""
        try:
            meta = await self._call(f"head {path}", lambda: obstore.head_async(self.store, path))
        except (FileNotFoundError, NotFoundError):
            return False
        return meta["size"] >= HEADER_BYTES

    def _timeout_for(self, nbytes: int) -> float:
        return self.timeout * max(1, nbytes // (64 << 20) + 1)

    async def _fetch(self, path: str, total: int) -> list[bytes]:
        """Bytes [0, total) of an object as concurrent ranged GETs of `part_bytes` (a part past
        the object's end fails with a range error; one that overlaps it comes back short)."""
        starts = range(0, total, self.part_bytes)
        parts = await self._call(
            f"get {path}",
            lambda: asyncio.gather(*(obstore.get_range_async(self.store, path, start=s,
                                                             end=min(s + self.part_bytes, total)) for s in starts)),
            timeout=self._timeout_for(total),
        )
        return [bytes(p) if not isinstance(p, bytes) else p for p in parts]

    async def _get_object(self, key: bytes, path: str, total: int) -> tuple[ObjectHeader, list[bytes]] | None:
        """The object's verified-size header and all its bytes, asking for `total` bytes first
        (the caller's best knowledge of its size). None if absent; BadObject if it is shorter or
        longer than its header says."""
        for _ in range(3):
            try:
                parts = await self._fetch(path, total)
            except (FileNotFoundError, NotFoundError):
                return None
            except _PastEnd:
                if total <= self.part_bytes:  # even the first byte is past the end: empty or truncated
                    raise BadObject("object shorter than its header") from None
                total = self.part_bytes  # shorter than asked: read the header, then the rest
                continue
            got = sum(len(p) for p in parts)
            header = parse_header(parts[0][:HEADER_BYTES]) if got >= HEADER_BYTES else None
            if header is None:
                raise BadObject(f"object of {got} bytes is shorter than its header")
            if header.medium_bytes == got:
                return header, parts
            if got < total or header.medium_bytes < got:  # the store ran out early, or holds extra bytes
                raise BadObject(f"object is {got} bytes, its header says {header.medium_bytes}")
            total = header.medium_bytes  # asked for too little: now the size is known
        raise BadObject("object size kept changing while it was read")

    async def read_into(self, key: bytes, dest: memoryview, *, layout_id: str, payload_len: int,
                        stored_bytes: int | None = None) -> CopyHeader | None:
        """Fill `dest` with the verified raw payload and return the object's header (the store
        learns namespace and writer from it). None on a missing or bad object (a bad one is
        deleted) or an encoded one of a layout this daemon has not registered;
        ObjectTierUnavailable if the store does not answer. `stored_bytes` is the object's size
        if the caller knows it (one round of GETs instead of two)."""
        path = object_path(key)
        raw_total = HEADER_BYTES + payload_len
        total = stored_bytes if stored_bytes is not None and HEADER_BYTES <= stored_bytes <= raw_total else raw_total
        try:
            found = await self._get_object(key, path, total)
            if found is None:
                return None
            self.counters["gets"] += 1
            header, parts = found
            if header.key == key and (header.layout_id != layout_id or header.payload_len != payload_len):
                log.warning("object %s is of layout %s, %d bytes; asked for %s, %d: a miss", key.hex(),
                            header.layout_id, header.payload_len, layout_id, payload_len)
                return None
            check_header(header, key, layout_id, payload_len)
            reason = unreadable_reason(self.cipher, header.encrypted, header.key_id)
            if reason is not None:
                self.counters["undecryptable"] += 1
                log.warning("object %s is %s: a miss (left in the bucket for the nodes that can read it)",
                            key.hex(), reason)
                return None
            if header.codec or header.encrypted:
                blob = memoryview(b"".join(parts)).cast("B")[HEADER_BYTES:]
                if checksum(blob) != header.checksum:
                    raise BadObject("checksum mismatch of the stored bytes")
                await asyncio.get_running_loop().run_in_executor(None, self._decode, header, blob, dest)
                return header.copy_header()
            pos = 0
            for i, part in enumerate(parts):
                view = memoryview(part)[HEADER_BYTES:] if i == 0 else memoryview(part)
                dest[pos:pos + len(view)] = view
                pos += len(view)
            if checksum(dest[:payload_len]) != header.checksum:
                raise BadObject("payload checksum mismatch")
        except AuthenticationFailed as exc:
            self.counters["undecryptable"] += 1
            await self._drop_bad(key, path, str(exc))
            return None
        except (BadObject, CodecError) as exc:
            await self._drop_bad(key, path, str(exc))
            return None
        except UnknownLayoutError as exc:
            log.warning("object %s: %s; a miss for now", key.hex(), exc)
            return None
        return header.copy_header()

    def _decode(self, header: ObjectHeader, blob: memoryview, dest: memoryview) -> None:
        """Decrypt and decode an object's checksummed stored bytes into `dest` (thread pool)."""
        if header.encrypted:
            assert self.cipher is not None
            plain = memoryview(bytearray(header.stored)) if header.codec else dest
            self.cipher.open_into(header.namespace, header.associated_data(), header.nonce, header.tag, blob, plain)
            blob = plain[: header.stored]
        if header.codec:
            self.codec.decode_into(blob, header.codec, header.layout_id, dest)

    async def _drop_bad(self, key: bytes, path: str, why: str) -> None:
        log.warning("object %s failed verification (%s): a miss; deleting it", key.hex(), why)
        self.counters["corrupt_deleted"] += 1
        try:
            await self._call(f"delete {path}", lambda: obstore.delete_async(self.store, path))
        except (ObjectTierUnavailable, FileNotFoundError, NotFoundError):
            pass

    async def stored_size(self, key: bytes) -> int | None:
        """The object's size (one HEAD, the cheapest request a store answers), or None if absent."""
        path = object_path(key)
        try:
            meta = await self._call(f"head {path}", lambda: obstore.head_async(self.store, path))
        except (FileNotFoundError, NotFoundError):
            return None
        size = int(meta["size"])
        return size if size >= HEADER_BYTES else None

    async def read_header(self, key: bytes) -> CopyHeader | None:
        """The object's verified header (one small ranged GET), or None if there is none or it is
        bad. Its `medium_bytes` is what the header says the object's size is (the ranged GET
        does not see the whole object; a read checks the size)."""
        path = object_path(key)
        try:
            raw = await self._call(f"get header {path}",
                                   lambda: obstore.get_range_async(self.store, path, start=0, end=HEADER_BYTES))
            header = parse_header(memoryview(raw))
            check_header(header, key, None, None)
            return header.copy_header()
        except (FileNotFoundError, NotFoundError):
            return None
        except BadObject as exc:
            await self._drop_bad(key, path, str(exc))
            return None

    async def delete(self, key: bytes) -> int:
        """Remove the object; the bytes freed, 0 if it was not there or the store did not answer."""
        path = object_path(key)
        try:
            meta = await self._call(f"head {path}", lambda: obstore.head_async(self.store, path))
            await self._call(f"delete {path}", lambda: obstore.delete_async(self.store, path))
            return int(meta["size"])
        except (FileNotFoundError, NotFoundError):
            return 0
        except ObjectTierUnavailable as exc:
            log.warning("could not delete %s: %s", path, exc)
            return 0


class _PastEnd(Exception):
    """A ranged GET started past the object's end (HTTP 416): the object is shorter than asked."""
