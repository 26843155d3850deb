"""The bucket behind the object tier: opened from a URL, checked at start, its errors read.

Built on obstore: S3 (and S3-compatible servers), plus its local-filesystem and in-memory
stores for embedded use and tests. Everything here that depends on how obstore and S3 servers
word their answers is in one place: which URL opens which store, which start-up failures are
configuration errors (stop the daemon) and which are a store that does not answer (start
without it), and which request errors are answers about an object rather than failures.
"""
from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlparse

import obstore
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from tierd.errors import ConfigError

SCHEMES = ("s3", "s3a", "file", "memory")


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


async def check_bucket(store: Any, url: str, timeout: float) -> BaseException | None:
    """Ask the store for one listing entry. A missing bucket or credentials the store refuses
    raise ConfigError; a store that does not answer is returned (not raised: the tier starts
    with its circuit open and recovers when the store does); None when the store answered."""
    try:
        stream = obstore.list(store, chunk_size=1)
        await asyncio.wait_for(stream.__anext__(), timeout)
    except StopAsyncIteration:
        pass
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise ConfigError(f"object_url {url!r}: the store refused our credentials "
                          f"(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {first_line(exc)}") from None
    except GenericError as exc:
        text = str(exc)
        if "169.254.169.254" in text or "/latest/api/token" in text:
            raise ConfigError(f"object_url {url!r}: no credentials in the environment and no instance "
                              f"metadata service answered; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        if "NoSuchBucket" in text:
            raise ConfigError(f"object_url {url!r}: the bucket does not exist; create it first") from None
        if any(s in text for s in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId")):
            raise ConfigError(f"object_url {url!r}: the store refused our credentials "
                              f"(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {first_line(exc)}") from None
        return exc
    except (asyncio.TimeoutError, OSError) as exc:
        return exc
    return None


def past_the_end(exc: BaseException) -> bool:
    """Whether a ranged GET failed because it started past the object's end (HTTP 416): an
    answer about the object (it is shorter than asked), not a failing store."""
    text = str(exc)
    return any(s in text for s in ("416", "Range Not Satisfiable", "Invalid range", "InvalidRange", "range was invalid"))


def unsupported_condition(exc: BaseException) -> bool:
    """Whether a store refused an If-None-Match PUT as a feature it lacks (not as a failure)."""
    text = str(exc)
    return any(s in text for s in ("501", "Not Implemented", "NotImplemented"))


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (obstore's run to many lines), or its type's name."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
