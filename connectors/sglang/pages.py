"""Between SGLang's host KV pool and tierd's canonical chunk: one page ↔ one chunk.

A tierd chunk is `[layers, kv_factor, tokens, heads * head_dim]` (see `tierd.layout`), the
same whatever the engine's host layout, so an SGLang instance with a `page_first` pool reads
what a `layer_first` instance wrote, and no stored page depends on how a pool was laid out
(SGLang's own file backend writes each pool's raw page bytes and cannot tell them apart).

SGLang's host pools (0.5.23, `sglang/srt/mem_cache/pool_host/`) keep, for MHA (K and V) and
MLA (one latent row per token, seen here as kv_factor 1 with one "head"):

    layout              MHA kv_buffer                  MLA kv_buffer
    layer_first         [2, L, tokens, H, D]           [L, tokens, 1, D]
    page_first          [2, tokens, L, H, D]           [tokens, L, 1, D]
    page_first_direct   [2, pages, L, page, H, D]      [pages, L, page, 1, D]

With a leading kv axis of 1 added to MLA the two agree, so one table serves both. For each
layout, `page(i)` is a *view* of the page starting at token `i`, permuted to canonical order
`[L, kv, page, H, D]`; a save copies it straight into the arena slot and a load copies the
slot straight back: one strided copy per page and direction, no temporary. The copies run in
numpy, single-threaded, on same-width integer views of the same memory: SGLang calls the
backend from its storage threads while the scheduler keeps torch's thread pool busy, and a copy
that fans out over busy cores stalls (the vLLM connector measured the same, see
connectors/vllm/paged.py; here torch's copy_ dropped to 0.27 GB/s on a loaded 2-core machine
where numpy held 1 GB/s). The same
permutation applied to a pool's "flat data page" (the host-order page that SGLang's plain
`get`/`set` interface hands around) serves that interface.

The layout carries the model's fingerprint (`tierd.fingerprint`), made from SGLang's server
arguments in this process: the content of the checkpoint it loaded (the model path, or the
Hugging Face cache snapshot of the revision), the revision, weight quantisation, compute and KV
cache dtypes, load format and config overrides. So pages computed with other weights behind the
same model name are never served. Every TP rank computes it alone, from the same files.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from tierd.errors import LayoutMismatchError
from tierd.fingerprint import fingerprint_details, model_fingerprint, resolve_model_dir, snapshot_revision
from tierd.layout import DTYPE_SIZES, Layout

log = logging.getLogger(__name__)

#: Buffer dtypes that hold KV as raw bytes whose format the dtype does not name (fp8 caches).
RAW_BYTE_DTYPES = ("uint8", "int8")

#: Host layouts this module decodes: (host order of one page, permutation to canonical).
HOST_LAYOUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "layer_first": ("kv,L,P,H,D", (1, 0, 2, 3, 4)),
    "page_first": ("kv,P,L,H,D", (2, 0, 1, 3, 4)),
    "page_first_direct": ("kv,L,P,H,D", (1, 0, 2, 3, 4)),
}


class HostPages:
    """Canonical-order views of the pages of one SGLang host KV pool."""

    def __init__(self, pool: Any, *, model: str, tp_rank: int, tp_size: int, kv_cache_dtype: str | None = None,
                 fingerprint: str | None = None) -> None:
        """`fingerprint`: the model's (see the module docstring); None computes it from SGLang's
        server arguments, "" stores pages without one (keyed by the model name only)."""
        kind = pool_kind(pool)
        layout_name = getattr(pool, "layout", None)
        if layout_name not in HOST_LAYOUTS:
            raise LayoutMismatchError(
                f"SGLang host pool layout {layout_name!r}: tierd supports {', '.join(HOST_LAYOUTS)} "
                "(set --hicache-mem-layout to one of them)"
            )
        dtype = str(pool.dtype).removeprefix("torch.")
        if dtype not in DTYPE_SIZES:
            raise LayoutMismatchError(f"SGLang host pool dtype {pool.dtype}: tierd stores {', '.join(DTYPE_SIZES)}")
        if dtype in RAW_BYTE_DTYPES:
            # SGLang keeps fp8 KV caches in uint8 buffers: the buffer dtype does not say which
            # fp8 format the bytes are, so the keys must, or two formats would share pages.
            if kv_cache_dtype is None:
                raise LayoutMismatchError(
                    f"SGLang host pool stores KV as raw {dtype} bytes (an fp8 KV cache): set \"kv_cache_dtype\" in "
                    "--hicache-storage-backend-extra-config to SGLang's --kv-cache-dtype (e.g. \"fp8_e4m3\"), so "
                    "pages of different formats never share keys"
                )
            model = f"{model}|kv_cache_dtype={kv_cache_dtype}"
        buf = pool.kv_buffer
        if not isinstance(buf, torch.Tensor) or buf.device.type != "cpu":
            raise LayoutMismatchError(f"{type(pool).__name__} has no CPU kv_buffer tensor; tierd copies from host memory")
        if getattr(pool, "dcp_size", 1) != 1:
            raise LayoutMismatchError(f"{type(pool).__name__} with dcp_size={pool.dcp_size}: not supported by tierd yet")
        if kind == "mha":
            if pool.head_dim != pool.v_head_dim:
                raise LayoutMismatchError(
                    f"SGLang MHA pool with head_dim {pool.head_dim} != v_head_dim {pool.v_head_dim}: not supported by tierd"
                )
            kv, heads, dim, host = 2, pool.head_num, pool.head_dim, buf
        else:
            kv, heads, dim, host = 1, 1, pool.kv_cache_dim, buf.unsqueeze(0)
        self.kind, self.host_layout = kind, layout_name
        self.page_size = pool.page_size
        self.layers = pool.layer_num
        if fingerprint is None:
            fingerprint = server_fingerprint()
        self.layout = Layout(model, dtype, self.layers, heads, dim, tp_rank=tp_rank, tp_size=tp_size,
                             chunk_tokens=self.page_size, kv_factor=kv, fingerprint=fingerprint)
        self.canonical_shape = (self.layers, kv, self.page_size, heads, dim)
        order, self._perm = HOST_LAYOUTS[layout_name]
        sizes = {"kv": kv, "L": self.layers, "P": self.page_size, "H": heads, "D": dim}
        self._flat_shape = tuple(sizes[a] for a in order.split(","))
        self._host = host
        self._pool = pool
        self.num_pages = pool.size // self.page_size

    def page(self, index: int) -> torch.Tensor:
        """The page whose first token is host index `index`, as a canonical-order view."""
        i = int(index)
        p = self.page_size
        if i % p or not 0 <= i < self.num_pages * p:
            raise IndexError(f"host index {i} is not the start of a page in a pool of {self.num_pages} pages of {p}")
        h = self._host
        if self.host_layout == "layer_first":
            part = h[:, :, i : i + p]
        elif self.host_layout == "page_first":
            part = h[:, i : i + p]
        else:
            part = h[:, i // p]
        return part.permute(self._perm)

    def flat(self, data_page: torch.Tensor) -> torch.Tensor:
        """A flat data page (host order, as SGLang's `get_data_page(flat=True)` gives) as a
        canonical-order view. Raises if it is not exactly one page of this pool."""
        if data_page.dtype != self._host.dtype or data_page.numel() != self.layout.chunk_bytes // self.layout.itemsize:
            raise LayoutMismatchError(
                f"data page of {data_page.numel()} {data_page.dtype} elements; this pool's pages are "
                f"{self.layout.chunk_bytes // self.layout.itemsize} {self._host.dtype} elements"
            )
        return data_page.view(self._flat_shape).permute(self._perm)

    def new_flat(self) -> torch.Tensor:
        """An empty flat data page (for `get` without a target)."""
        return self._pool.get_dummy_flat_data_page()

    def chunk(self, slot: torch.Tensor) -> torch.Tensor:
        """An arena slot (a canonical chunk tensor) as [L, kv, page, H, D]."""
        return slot.view(self.canonical_shape)

    def save(self, index: int, slot: torch.Tensor) -> None:
        """Copy the page at host index `index` into an arena slot."""
        copy(self.chunk(slot), self.page(index))

    def load(self, slot: torch.Tensor, index: int) -> None:
        """Copy an arena slot into the page at host index `index`."""
        copy(self.page(index), self.chunk(slot))


_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src, bit for bit, as one single-threaded strided numpy copy (any dtype: the
    elements are moved as integers of the same width)."""
    np.copyto(dst.view(_INT[dst.element_size()]).numpy(), src.view(_INT[src.element_size()]).numpy())


def pool_kind(pool: Any) -> str:
    """"mha" or "mla" for SGLang's plain KV host pools; refuses the others (hybrid groups,
    K-only index pools, asymmetric or packed-scale pools) whose pages are not plain KV."""
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

    name = type(pool).__name__
    if isinstance(pool, MLATokenToKVPoolHost) and name == "MLATokenToKVPoolHost":
        return "mla"
    if isinstance(pool, MHATokenToKVPoolHost) and name == "MHATokenToKVPoolHost":
        return "mha"
    raise LayoutMismatchError(
        f"SGLang host pool {name}: tierd stores pages of MHATokenToKVPoolHost and MLATokenToKVPoolHost only"
    )


def server_fingerprint() -> str:
    """The fingerprint of the model this SGLang process serves (`fingerprint_from_server_args` of
    its server arguments); "" with a warning where there are none (a pool used outside a server)."""
    try:
        from sglang.srt.runtime_context import get_server_args

        args = get_server_args()
    except (ImportError, ValueError) as exc:  # ValueError: "Global server args is not set yet!"
        log.warning("tierd: no SGLang server arguments in this process (%s): pages are keyed by the model name only, "
                    "without a fingerprint of its weights", exc)
        return ""
    return fingerprint_from_server_args(args)


def fingerprint_from_server_args(args: Any) -> str:
    """The model fingerprint from SGLang's `ServerArgs` (any object with its attribute names)."""
    model_path = getattr(args, "model_path", None)
    if not isinstance(model_path, str) or not model_path:
        raise LayoutMismatchError(f"SGLang server arguments name no model path ({model_path!r}) to fingerprint")
    revision = getattr(args, "revision", None)
    load_format = str(getattr(args, "load_format", None))
    facts = {
        "quantization": getattr(args, "quantization", None),
        "dtype": getattr(args, "dtype", None),
        "kv_cache_dtype": getattr(args, "kv_cache_dtype", None),
        "load_format": load_format,
        "seed": getattr(args, "random_seed", None) if load_format == "dummy" else None,
        "json_model_override_args": getattr(args, "json_model_override_args", None) or None,
    }
    try:
        where = resolve_model_dir(model_path, revision, getattr(args, "download_dir", None))
    except FileNotFoundError as exc:
        raise LayoutMismatchError(
            f"tierd cannot read the files of the model SGLang serves to fingerprint them: {exc}"
        ) from None
    weights = fingerprint_details(where)
    facts["revision"] = revision or snapshot_revision(where)
    digest = model_fingerprint(weights.digest, facts)
    log.info("tierd model fingerprint %s: %s (%d files, %.1f MiB read in %.2f s)", digest, where, weights.files,
             weights.bytes_read / 2**20, weights.seconds)
    return digest
