"""tierd as SGLang HiCache's L3 storage backend (SGLang 0.5.23).

Registered through SGLang's dynamic loader:

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config
        '{"backend_name": "tierd", "module_path": "connectors.sglang.backend",
          "class_name": "TierdHiCacheStorage", "interface_v1": 1, "socket": "/tmp/tierd.sock"}'

SGLang constructs the backend with its `HiCacheStorageConfig` (the settings are checked then:
`connectors.sglang.config`), then registers its host KV pool; from the pool the backend learns
the page geometry and so the tierd layout and key seed. One SGLang page is one tierd chunk.

With `"interface_v1": 1` SGLang calls `batch_get_v1` / `batch_set_v1` with host-pool indices:
each page is copied once, straight between the host pool and an arena slot of the daemon's
shared memory (no socket bytes, no temporary). Without it SGLang uses the plain
`batch_get` / `batch_set` on "flat data pages" it allocates; both are supported.

Failures never raise into SGLang's storage threads and never yield wrong KV: a daemon that is
down or goes away, a full store, or a chunk evicted between the exists check and the read is
reported as a miss (False / None / a shorter leading run), which SGLang recomputes.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, List, Optional, Sequence

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from connectors.link import CONNECTION_ERRORS, DaemonLink
from connectors.sglang.config import BackendConfig
from connectors.sglang.identity import server_adapters_tag
from connectors.sglang.keys import PageKeys
from connectors.sglang.pages import HostPages, copy
from tierd.client import Client
from tierd.errors import DaemonUnavailableError, TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)

#: Lookup code of a key that no tier holds (see `tierd.client.LookupResult`).
ABSENT = 255


class TierdHiCacheStorage(HiCacheStorage):
    """HiCacheStorage over a tierd daemon. Thread-safe: SGLang's prefetch, backup and query
    threads share one daemon connection, each call one request (the copies run outside it)."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None) -> None:
        self.config = BackendConfig.from_storage_config(storage_config)
        self.storage_config = storage_config
        self.adapters = server_adapters_tag()  # "" without LoRA; ConfigError for an adapter tierd cannot read
        self.link = DaemonLink(self.config.socket, name=f"sglang-tp{self.config.tp_rank}-pid{os.getpid()}",
                               namespace=self.config.namespace, map_arena=True)
        self.pages: HostPages | None = None
        self.keys: PageKeys | None = None
        if self.link.client() is None and self.config.require_daemon:
            raise DaemonUnavailableError(
                f"no tierd daemon answers at {self.config.socket} and require_daemon is true: "
                f"start one with `tierd serve --socket {self.config.socket}`"
            )

    # ------------------------------------------------------------------ set-up

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Learn the page geometry; refuses (LayoutMismatchError) a pool whose pages tierd cannot
        store as plain KV, which fails SGLang's attach at start rather than storing garbage."""
        super().register_mem_pool_host(mem_pool_host)
        c = self.config
        self.pages = HostPages(mem_pool_host, model=c.model, tp_rank=c.tp_rank, tp_size=c.tp_size,
                               kv_cache_dtype=c.kv_cache_dtype)
        self.keys = PageKeys(self.pages.layout, c.namespace, c.shard_tag, self.adapters)
        self.link.set_layout(self.pages.layout)
        log.info("tierd HiCache backend: %s %s pages of %d tokens, %d bytes each, namespace %r, socket %s",
                 self.pages.kind.upper(), self.pages.host_layout, self.pages.page_size,
                 self.pages.layout.chunk_bytes, c.namespace, c.socket)

    def close(self) -> None:
        self.link.close()

    # ------------------------------------------------------------------ v1: host-pool indices

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        pages = self._pages()
        starts = self._page_starts(host_indices, len(keys))
        return self._put(keys, lambda i, slot: pages.save(starts[i], slot),
                         first_position=_position(extra_info))

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        pages = self._pages()
        starts = self._page_starts(host_indices, len(keys))
        return self._get(keys, lambda i, slot: pages.load(slot, starts[i]), prefix_only=True)

    # ------------------------------------------------------------------ plain interface (flat data pages)

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location] if target_location is not None else None)[0]

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[torch.Tensor | None]:
        pages = self._pages()
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        targets = [t if t is not None else pages.new_flat() for t in targets]
        views = [pages.flat(t) for t in targets]
        done = self._get(keys, lambda i, slot: copy(views[i], pages.chunk(slot)), prefix_only=False)
        return [t if ok else None for t, ok in zip(targets, done)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        pages = self._pages()
        if values is None or len(values) != len(keys):
            log.error("tierd batch_set: %d keys but %s values; nothing stored", len(keys),
                      "no" if values is None else len(values))
            return False
        views = [pages.flat(v) for v in values]  # a value that is not one page raises here, before any write
        return all(self._put(keys, lambda i, slot: copy(pages.chunk(slot), views[i])))

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many leading pages of `keys` the store holds (in any tier)."""
        if not keys:
            return 0
        tkeys = self._keys(keys)
        client = self.link.client()
        if client is None:
            return 0
        try:
            return client.lookup(tkeys).prefix
        except CONNECTION_ERRORS as exc:
            self.link.drop(exc)
        except TierdError as exc:
            log.warning("tierd lookup failed (%s); reporting a miss", exc)
        return 0

    def clear(self) -> bool:
        """Evict every chunk of this backend's namespace (SGLang's "clear storage" admin call)."""
        client = self.link.client()
        if client is None:
            return False
        try:
            client.evict(namespace=self.config.namespace)
            return True
        except (TierdError, OSError) as exc:
            log.warning("tierd clear failed (%s)", exc)
            return False

    def get_stats(self) -> None:
        return None

    # ------------------------------------------------------------------ plumbing

    def _pages(self) -> HostPages:
        if self.pages is None:
            raise RuntimeError("TierdHiCacheStorage: SGLang has not registered its host KV pool yet "
                               "(register_mem_pool_host); the backend cannot know the page layout")
        return self.pages

    def _keys(self, keys: Sequence[str]) -> list[bytes]:
        assert self.keys is not None, "register_mem_pool_host first"
        return self.keys(keys)

    def _page_starts(self, host_indices: torch.Tensor, n: int) -> list[int]:
        p = self._pages().page_size
        if host_indices.numel() != n * p:
            raise ValueError(f"{host_indices.numel()} host indices for {n} pages of {p} tokens")
        return host_indices.view(-1)[::p].tolist()

    def _batch_len(self, client: Client) -> int:
        """Chunks per reserve/acquire: at most a quarter of the arena, so one call never needs it all."""
        return max(1, client.info["arena_bytes"] // 4 // self._pages().layout.chunk_bytes)

    def _batched(self, keys: Sequence[str], what: str,
                 batch: Callable[[Client, Layout, int, list[bytes], list[bool]], bool]) -> list[bool]:
        """Run `batch(client, layout, start, part, ok)` over the keys in arena-sized parts (a
        False return stops early), setting ok[i] for each page done. A daemon that is down or
        fails makes the rest misses, never an exception into SGLang's threads."""
        ok = [False] * len(keys)
        if not keys:
            return ok
        tkeys = self._keys(keys)
        layout = self._pages().layout
        client = self.link.client()
        if client is None:
            return ok
        try:
            step = self._batch_len(client)
            for start in range(0, len(tkeys), step):
                if not batch(client, layout, start, tkeys[start : start + step], ok):
                    break
        except CONNECTION_ERRORS as exc:
            self.link.drop(exc)
        except TierdError as exc:
            log.warning("tierd %s failed (%s); those pages are misses", what, exc)
        return ok

    def _put(self, keys: Sequence[str], fill: Callable[[int, torch.Tensor], Any], *, first_position: int = 0) -> list[bool]:
        """Store each page whose key is not stored yet: reserve slots, `fill(i, slot)` copies page i
        into its slot, commit. True per key that is stored afterwards (by us or before us)."""

        def put(client: Client, layout: Layout, start: int, part: list[bytes], ok: list[bool]) -> bool:
            with client.put(layout, part, self.config.namespace, first_position=first_position + start) as batch:
                for i in batch.reserved:
                    fill(start + i, batch.tensor(i))
            reserved = set(batch.reserved)
            for i in reserved:
                ok[start + i] = True
            others = [i for i in range(len(part)) if i not in reserved]
            if others:  # already stored, being written by another client, or no room: ask which
                codes = client.lookup([part[i] for i in others]).codes
                for i, code in zip(others, codes):
                    ok[start + i] = code != ABSENT
            return True

        return self._batched(keys, "put", put)

    def _get(self, keys: Sequence[str], read: Callable[[int, torch.Tensor], Any], *, prefix_only: bool) -> list[bool]:
        """Lease the pages and `read(i, slot)` each present one out of its slot. With `prefix_only`,
        only the leading run is read (what SGLang's prefetch uses). True per page read whole."""

        def get(client: Client, layout: Layout, start: int, part: list[bytes], ok: list[bool]) -> bool:
            with client.get(layout, part, prefix_only=prefix_only) as lease:
                present = range(lease.count) if prefix_only else [i for i, s in enumerate(lease.slots) if s is not None]
                for i in present:
                    read(start + i, lease.tensor(i))
                    ok[start + i] = True
            return not (prefix_only and lease.count < len(part))

        return self._batched(keys, "get", get)


def _position(extra_info: Optional[HiCacheStorageExtraInfo]) -> int:
    """Page index of the first key in its sequence, when SGLang passes the preceding keys."""
    prefix = getattr(extra_info, "prefix_keys", None) if extra_info is not None else None
    return len(prefix) if prefix else 0
