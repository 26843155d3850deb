"""The object tier (L4): chunks as immutable objects in an S3-compatible bucket shared by all nodes.

Built on obstore (S3, plus its local-filesystem and in-memory stores for embedded use). Unlike
the NVMe tier this one is asynchronous — requests run on the daemon's event loop, many at
once — and *shared*: other nodes write to the same prefix, so the local index never knows all
of it. The store therefore asks it about keys it has not seen (`probe_headers`), counts only
this node's own writes against `--object`, and never rebuilds an index by listing the bucket.

Every call has a deadline, obstore retries transient errors with backoff, and a circuit
breaker stops calling a store that keeps failing (calls then fail at once with
`ObjectTierUnavailable`), probing it again after a cooldown. What a read returns is verified
(header, size, xxh3 checksum): a bad object is a miss and is deleted, never data.

With a codec (`--object-codec`, see `tierd.tiers.encoding`) objects hold the encoded chunk;
encoding and decoding run in the loop's default thread pool, off the event loop. An object's
size is then not known from its key's layout: the store passes the size it saw (its write, a
lookup's HEAD) as a hint, and a read without a right hint learns the size from the header.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlparse

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

from tierd.errors import CodecError, ConfigError, ObjectTierUnavailable, UnknownLayoutError
from tierd.tiers.base import StoredRecord
from tierd.tiers.breaker import CircuitBreaker
from tierd.tiers.encoding import TierCodec
from tierd.tiers.object_format import (
    HEADER_BYTES,
    BadObject,
    ObjectHeader,
    check_header,
    checksum,
    object_path,
    pack_header,
    parse_header,
)

log = logging.getLogger(__name__)

SCHEMES = ("s3", "s3a", "file", "memory")
T = TypeVar("T")


def open_store(url: str, *, env: Mapping[str, str] | None = None, timeout: float = 5.0) -> Any:
    """An obstore store for `url`: s3://bucket/prefix (endpoint, region and credentials from the
    standard AWS_* variables; AWS_ENDPOINT_URL for S3-compatible servers), file:///dir, memory://."""
    env = os.environ if env is None else env
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise ConfigError(f"object_url {url!r}: use s3://bucket/prefix, file:///path or memory://")
    if parsed.scheme == "memory":
        return obstore.store.MemoryStore()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ConfigError(f"object_url {url!r}: a file:// URL needs an absolute path, like file:///var/tierd")
        os.makedirs(parsed.path, exist_ok=True)
        return obstore.store.LocalStore(parsed.path, mkdir=True)
    if not parsed.netloc:
        raise ConfigError(f"object_url {url!r}: name the bucket, like s3://my-bucket/tierd")
    config: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT")
    if endpoint:
        config["endpoint"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    config["region"] = region or "us-east-1"
    for var, key in (("AWS_ACCESS_KEY_ID", "access_key_id"), ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                     ("AWS_SESSION_TOKEN", "session_token")):
        if env.get(var):
            config[key] = env[var]
    client = {"timeout": timedelta(seconds=timeout), "connect_timeout": timedelta(seconds=min(timeout, 2.0)),
              "allow_http": bool(endpoint and endpoint.startswith("http://"))}
    retry = {"max_retries": 2, "retry_timeout": timedelta(seconds=timeout),
             "backoff": {"init_backoff": timedelta(milliseconds=20), "max_backoff": timedelta(seconds=1), "base": 2}}
    prefix = parsed.path.strip("/") or None
    try:
        return obstore.store.S3Store(parsed.netloc, prefix=prefix, config=config, client_options=client,
                                     retry_config=retry)
    except Exception as exc:  # obstore validates the config eagerly
        raise ConfigError(f"object_url {url!r}: {exc}") from None


class ObjectTier:
    """Chunk objects under one store prefix. Async methods run on the caller's event loop."""

    name = "object"
    shared = True  # other nodes write here too: see the module docstring

    def __init__(self, url: str, *, node: str, timeout: float = 5.0, part_bytes: int = 8 << 20,
                 concurrency: int = 8, env: Mapping[str, str] | None = None, store: Any = None,
                 codec: str | TierCodec = "raw") -> None:
        self.url = url
        self.codec = codec if isinstance(codec, TierCodec) else TierCodec(codec)
        self.node = node
        self.timeout = timeout
        self.part_bytes = part_bytes
        self.concurrency = concurrency
        self.store = store if store is not None else open_store(url, env=env, timeout=timeout)
        self.breaker = CircuitBreaker(f"object tier {url}")
        self.counters = {"puts": 0, "put_skipped_existing": 0, "gets": 0, "probes": 0, "probe_found": 0,
                         "errors": 0, "timeouts": 0, "corrupt_deleted": 0}
        #: Uploads are conditional PUTs (If-None-Match: *): one request, and the store refuses a
        #: key that exists. Turned off for good if this store rejects the header as unsupported;
        #: uploads then ask with a HEAD first.
        self.conditional_put = True

    # ------------------------------------------------------------ LowerTier contract (sync part)

    def stored_bytes(self, payload_len: int) -> int:
        return HEADER_BYTES + payload_len

    def scan(self) -> Iterable[StoredRecord]:
        """Nothing: a shared bucket is never listed at start (it may hold millions of other
        nodes' objects); the store learns of objects through lookups and its own writes."""
        return ()

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
            if _past_the_end(exc):  # an answer about the object, not a failing store
                self.breaker.success()
                raise _PastEnd(f"{what}: {_first_line(exc)}") from None
            self.counters["errors"] += 1
            self.breaker.failure()
            raise ObjectTierUnavailable(f"{what}: {_first_line(exc)}") from None
        self.breaker.success()
        return result

    async def check(self) -> None:
        """At start: a missing bucket or credentials the store refuses are configuration errors;
        a store that does not answer is not (the tier starts with its circuit open and recovers)."""
        try:
            stream = obstore.list(self.store, chunk_size=1)
            await asyncio.wait_for(stream.__anext__(), self.timeout)
        except StopAsyncIteration:
            pass
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise ConfigError(f"object_url {self.url!r}: the store refused our credentials "
                              f"(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {_first_line(exc)}") from None
        except GenericError as exc:
            text = str(exc)
            if "169.254.169.254" in text or "/latest/api/token" in text:
                raise ConfigError(f"object_url {self.url!r}: no credentials in the environment and no instance "
                                  f"metadata service answered; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
            if "NoSuchBucket" in text:
                raise ConfigError(f"object_url {self.url!r}: the bucket does not exist; create it first") from None
            if any(s in text for s in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")):
                raise ConfigError(f"object_url {self.url!r}: the store refused our credentials "
                                  f"(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {_first_line(exc)}") from None
            self._unreachable_at_start(exc)
        except (asyncio.TimeoutError, OSError) as exc:
            self._unreachable_at_start(exc)

    def _unreachable_at_start(self, exc: BaseException) -> None:
        log.warning("object store %s does not answer (%s); starting with local tiers only, retrying in the background",
                    self.url, _first_line(exc) or type(exc).__name__)
        for _ in range(self.breaker.threshold):
            self.breaker.failure()

    # ------------------------------------------------------------ chunk operations

    async def write_async(self, key: bytes, layout_id: str, namespace: str, payload: memoryview) -> int:
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
        raw_len = len(payload)
        stored: Any = payload
        codec = ""
        if self.codec.codec is not None:
            stored, codec = await asyncio.get_running_loop().run_in_executor(
                None, self.codec.encode, payload, layout_id)
        stored = memoryview(stored).cast("B")
        header = pack_header(ObjectHeader(key, layout_id, namespace, raw_len, checksum(stored), time.time(),
                                          self.node, len(stored), codec))
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
                if mode == "create" and _unsupported_condition(exc):
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
            if header.object_bytes == got:
                return header, parts
            if got < total or header.object_bytes < got:  # the store ran out early, or holds extra bytes
                raise BadObject(f"object is {got} bytes, its header says {header.object_bytes}")
            total = header.object_bytes  # asked for too little: now the size is known
        raise BadObject("object size kept changing while it was read")

    async def read_into_async(self, key: bytes, dest: memoryview, *, layout_id: str, payload_len: int,
                              stored_bytes: int | None = None) -> ObjectHeader | bool:
        """Fill `dest` with the verified raw payload and return the object's header (true, as the
        LowerTier contract wants; the store learns namespace and writer from it). False on a
        missing or bad object (a bad one is deleted) or an encoded one of a layout this daemon
        has not registered; ObjectTierUnavailable if the store does not answer. `stored_bytes`
        is the object's size if the caller knows it (one round of GETs instead of two)."""
        path = object_path(key)
        raw_total = HEADER_BYTES + payload_len
        total = stored_bytes if stored_bytes is not None and HEADER_BYTES <= stored_bytes <= raw_total else raw_total
        try:
            found = await self._get_object(key, path, total)
            if found is None:
                return False
            self.counters["gets"] += 1
            header, parts = found
            if header.key == key and (header.layout_id != layout_id or header.payload_len != payload_len):
                log.warning("object %s is of layout %s, %d bytes; asked for %s, %d: a miss", key.hex(),
                            header.layout_id, header.payload_len, layout_id, payload_len)
                return False
            check_header(header, key, layout_id, payload_len)
            if header.codec:
                blob = memoryview(b"".join(parts)).cast("B")[HEADER_BYTES:]
                if checksum(blob) != header.checksum:
                    raise BadObject("checksum mismatch of the stored bytes")
                await asyncio.get_running_loop().run_in_executor(
                    None, self.codec.decode_into, blob, header.codec, layout_id, dest)
                return header
            pos = 0
            for i, part in enumerate(parts):
                view = memoryview(part)[HEADER_BYTES:] if i == 0 else memoryview(part)
                dest[pos:pos + len(view)] = view
                pos += len(view)
            if checksum(dest[:payload_len]) != header.checksum:
                raise BadObject("payload checksum mismatch")
        except (BadObject, CodecError) as exc:
            await self._drop_bad(key, path, str(exc))
            return False
        except UnknownLayoutError as exc:
            log.warning("object %s: %s; a miss for now", key.hex(), exc)
            return False
        return header

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

    async def read_header(self, key: bytes) -> ObjectHeader | None:
        """The object's verified header (one small ranged GET), or None if there is none or it is bad."""
        path = object_path(key)
        try:
            raw = await self._call(f"get header {path}",
                                   lambda: obstore.get_range_async(self.store, path, start=0, end=HEADER_BYTES))
            header = parse_header(memoryview(raw))
            check_header(header, key, None, None)
            return header
        except (FileNotFoundError, NotFoundError):
            return None
        except BadObject as exc:
            await self._drop_bad(key, path, str(exc))
            return None

    async def delete_async(self, key: bytes) -> int:
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

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "breaker": self.breaker.state.value, "breaker_opened": self.breaker.opened,
                "node": self.node, "url": self.url}


class _PastEnd(Exception):
    """A ranged GET started past the object's end (HTTP 416): the object is shorter than asked."""


def _past_the_end(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("416", "Range Not Satisfiable", "Invalid range", "InvalidRange", "range was invalid"))


def _unsupported_condition(exc: BaseException) -> bool:
    """Whether a store refused an If-None-Match PUT as a feature it lacks (not as a failure)."""
    text = str(exc)
    return any(s in text for s in ("501", "Not Implemented", "NotImplemented"))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
