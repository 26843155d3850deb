"""The C++ CPU kernels against the pure-torch reference, bit for bit, on random bytes in every
supported layout; and the reference against each engine's own per-element rule.

Every gather starts from a sentinel-filled chunk and is run twice with two different
sentinels: the tokens the runs cover must come out identical (so every element of them was
written), the others must still hold the sentinel (nothing else was touched)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from native import PagedCache, block_runs, copier, slot_runs
from native import cpu as native_cpu
from native.backend import TorchCopier
from tests.native.layouts import DTYPES, KINDS, build, random_bytes, random_runs
from tierd.errors import InvalidArgumentError, LayoutMismatchError

cpp_kernels, cpp_why = native_cpu.load()
needs_cpp = pytest.mark.skipif(cpp_kernels is None, reason=f"C++ CPU kernels unavailable: {cpp_why}")


def _chunks(cache: PagedCache, n: int, tokens: int, fill: int) -> list[torch.Tensor]:
    return [torch.full(cache.chunk_shape(tokens), fill, dtype=torch.uint8 if cache.itemsize == 1 else
                       {2: torch.int16, 4: torch.int32}[cache.itemsize]) for _ in range(n)]


def _covered(runs: np.ndarray, n: int, tokens: int) -> list[torch.Tensor]:
    masks = [torch.zeros(tokens, dtype=torch.bool) for _ in range(n)]
    for c, t, _, _, k in runs:
        masks[c][t:t + k] = True
    return masks


def _check_gather(built, runs, n_chunks, tokens, impl, layers=None):
    cache = built.cache
    ref = TorchCopier(cache)
    results = []
    for fill in (0x55, 0x2A):
        want, got = _chunks(cache, n_chunks, tokens, fill), _chunks(cache, n_chunks, tokens, fill)
        ref.gather(runs, want, layers)
        impl.gather(runs, got, layers)
        for w, g in zip(want, got):
            assert torch.equal(w, g), "kernel gather differs from the reference"
        results.append(want)
    masks = _covered(runs, n_chunks, tokens)
    lay = layers or range(cache.num_layers)
    for a, b, m in zip(*results, masks):
        sel = a[list(lay)][:, :, m]
        assert torch.equal(sel, b[list(lay)][:, :, m]), "a covered element was not written"
        untouched = torch.ones_like(a, dtype=torch.bool)
        untouched[list(lay), :, :] &= ~m.view(1, 1, -1, 1)
        assert (a[untouched] == 0x55).all() and (b[untouched] == 0x2A).all(), "an element outside the runs was written"
    return results[0]


def _check_scatter(make, runs, n_chunks, tokens, impl_name, layers=None):
    """Scatter the same random chunks through the reference and the kernel into two identical
    random caches; the caches must end identical, byte for byte, everywhere."""
    a, b = make(), make()
    gen = torch.Generator().manual_seed(7)
    per_chunk = a.cache.num_layers * a.cache.kv_factor * tokens * a.cache.chunk_row * a.cache.itemsize
    chunks = [random_bytes(per_chunk, gen) for _ in range(n_chunks)]
    before = [s.clone() for s in a.storages]
    TorchCopier(a.cache).scatter(chunks, runs, layers)
    copier(b.cache, impl_name).scatter(chunks, runs, layers)
    for sa, sb in zip(a.storages, b.storages):
        assert torch.equal(sa, sb), "kernel scatter differs from the reference"
    assert any(not torch.equal(x, y) for x, y in zip(before, a.storages)), "scatter wrote nothing"


@needs_cpp
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_cpp_matches_reference_in_every_layout(kind, dtype):
    L, H, D, bs, nb, T = 3, 2, 16, 8, 10, 32
    seed = abs(hash((kind, str(dtype)))) % 2**31
    make = lambda: build(kind, L, H, D, bs, nb, dtype, torch.Generator().manual_seed(seed))  # noqa: E731
    built = make()
    runs = random_runs(np.random.default_rng(seed), nb, bs, 2, T)
    _check_gather(built, runs, 2, T, copier(built.cache, "cpp"))
    _check_scatter(make, runs, 2, T, "cpp")


@needs_cpp
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES), layers=st.integers(1, 4),
       heads=st.integers(1, 4), head_dim=st.sampled_from([1, 2, 3, 8, 17, 64]), block_size=st.sampled_from([1, 2, 5, 16, 32]),
       n_chunks=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), threads=st.sampled_from([1, 2]),
       layer_part=st.booleans())
def test_cpp_matches_reference_on_random_layouts(kind, dtype, layers, heads, head_dim, block_size, n_chunks, seed,
                                                  threads, layer_part):
    tokens = block_size * 3 + 1  # chunks never a whole number of blocks here
    nb = n_chunks * 5 + 2
    make = lambda: build(kind, layers, heads, head_dim, block_size, nb, dtype, torch.Generator().manual_seed(seed))  # noqa: E731
    built = make()
    rng = np.random.default_rng(seed)
    runs = random_runs(rng, nb, block_size, n_chunks, tokens)
    lay = None
    if layer_part:
        lo = int(rng.integers(0, layers))
        lay = range(lo, int(rng.integers(lo + 1, layers + 1)))
    impl = native_cpu.CpuCopier(built.cache, cpp_kernels, threads)
    _check_gather(built, runs, n_chunks, tokens, impl, lay)
    a, b = make(), make()
    chunks = [random_bytes(layers * a.cache.kv_factor * tokens * heads * head_dim * a.cache.itemsize, torch.Generator().manual_seed(seed + i))
              for i in range(n_chunks)]
    TorchCopier(a.cache).scatter(chunks, runs, lay)
    native_cpu.CpuCopier(b.cache, cpp_kernels, threads).scatter(chunks, runs, lay)
    for sa, sb in zip(a.storages, b.storages):
        assert torch.equal(sa, sb)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_follows_each_engines_own_rule(kind):
    """The reference gather, element by element, against where each engine keeps K/V."""
    L, H, D, bs, nb, T = 2, 3, 4, 4, 6, 7
    built = build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(3))
    runs = block_runs([4, 1], bs, first_token=1, num_tokens=6, block_offset=2)  # tokens 1..6 of the chunk
    out = _chunks(built.cache, 1, T, 0x55)[0]
    TorchCopier(built.cache).gather(runs, [out])
    slots = [(4, 2), (4, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    for l in range(L):
        for i, (b, o) in enumerate(slots):
            for h in range(H):
                assert torch.equal(out[l, 0, 1 + i, h * D:(h + 1) * D], built.k_at(l, b, h, o))
                if built.v_at is not None:  # (an MLA cache has no V)
                    assert torch.equal(out[l, 1, 1 + i, h * D:(h + 1) * D], built.v_at(l, b, h, o))
    assert (out[:, :, 0] == 0x55).all()


@needs_cpp
def test_round_trip_through_arena_bytes_and_slot_mapping():
    built = build("cpu_one_buffer", 4, 2, 64, 16, 12, torch.bfloat16, torch.Generator().manual_seed(1))
    dst = build("cpu_one_buffer", 4, 2, 64, 16, 12, torch.bfloat16, torch.Generator().manual_seed(2))
    c = copier(built.cache)
    assert c.backend == "cpp"
    slot = np.full(4 * 2 * 48 * 128 * 2, 0x77, dtype=np.uint8)  # an arena slot: raw bytes
    slots = [5 * 16 + 3 + i for i in range(13)] + [9 * 16 + i for i in range(35)]  # spans 3 blocks
    c.gather(slot_runs(slots, 16), [slot])
    assert len(slot_runs(slots, 16)) == 4  # blocks 5, 9, 10, 11
    copier(dst.cache).scatter([slot], slot_runs(slots, 16))
    again = np.zeros_like(slot)
    copier(dst.cache).gather(slot_runs(slots, 16), [again])
    assert np.array_equal(slot, again)


@needs_cpp
def test_bad_runs_and_chunks_are_refused_before_any_byte_moves():
    built = build("cpu_per_layer", 2, 2, 8, 4, 5, torch.float16, torch.Generator().manual_seed(5))
    c = copier(built.cache, "cpp")
    before = [s.clone() for s in built.storages]
    chunk = torch.zeros(built.cache.chunk_shape(8), dtype=torch.float16)
    with pytest.raises(InvalidArgumentError, match="outside"):
        c.scatter([chunk], block_runs([1, 5], 4))  # block 5 of 5
    with pytest.raises(InvalidArgumentError, match="outside"):
        c.scatter([chunk], np.array([[0, 6, 1, 0, 4]]))  # tokens 6..9 of an 8-token chunk
    with pytest.raises(InvalidArgumentError, match="outside"):
        c.scatter([chunk], np.array([[0, 0, 1, 2, 3]]))  # offsets 2..4 of a 4-token block
    with pytest.raises(InvalidArgumentError, match="whole number of tokens"):
        c.scatter([torch.zeros(7)], block_runs([1], 4))
    with pytest.raises(InvalidArgumentError, match="read-only"):
        ro = np.zeros(chunk.numel() * 2, np.uint8)
        ro.flags.writeable = False
        c.gather(block_runs([1, 2], 4), [ro])
    with pytest.raises(InvalidArgumentError, match="layers"):
        c.scatter([chunk], block_runs([1, 2], 4), layers=range(1, 3))
    for a, b in zip(before, built.storages):
        assert torch.equal(a, b)


def test_mismatched_views_are_refused():
    t = torch.zeros(4, 2, 8, 16)
    with pytest.raises(LayoutMismatchError, match="expected"):
        PagedCache.from_vllm_cpu([t], head_dim=4)
    with pytest.raises(LayoutMismatchError, match="every layer must match"):
        PagedCache.from_views([t[..., :8], t[..., :4]], [t[..., 8:], t[..., 8:12]])


def test_falls_back_to_torch_without_a_library(monkeypatch, tmp_path):
    """No library built by setup.py and no compiler: the reference runs, and the report says why."""
    from native import build as native_build
    from native.backend import report

    monkeypatch.setattr(native_build, "installed_cpu_library", lambda: None)
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    monkeypatch.setenv("TIERD_NATIVE_CACHE", str(tmp_path))
    native_cpu.load.cache_clear()
    try:
        built = build("cpu_one_buffer", 2, 1, 4, 4, 3, torch.float32, torch.Generator().manual_seed(0))
        assert copier(built.cache).backend == "torch"
        with pytest.raises(InvalidArgumentError, match="no C\\+\\+ compiler"):
            copier(built.cache, "cpp")
        info = report()
        assert info["cpu_backend"] == "torch" and "no C++ compiler" in info["cpu_library"]
    finally:
        native_cpu.load.cache_clear()


def test_backend_override_is_checked(monkeypatch):
    built = build("cpu_one_buffer", 1, 1, 4, 4, 2, torch.float32, torch.Generator().manual_seed(0))
    monkeypatch.setenv("TIERD_NATIVE_BACKEND", "torch")
    assert copier(built.cache).backend == "torch"
    monkeypatch.setenv("TIERD_NATIVE_BACKEND", "fast")
    with pytest.raises(InvalidArgumentError, match="TIERD_NATIVE_BACKEND"):
        copier(built.cache)
    with pytest.raises(InvalidArgumentError, match="device caches"):
        copier(built.cache, "cuda")


@needs_cpp
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a process allowed on at least 2 cores")
def test_loading_the_library_keeps_the_threads_cores():
    """libgomp binds the thread that loads it to the first OpenMP place of the environment vllm-cpu
    sets (GOMP_CPU_AFFINITY); native must not move a connector thread that way."""
    cores = sorted(os.sched_getaffinity(0))
    code = (
        "import os, threading\n"
        "from native import cpu\n"
        "def run():\n"
        f"    os.sched_setaffinity(0, {set(cores)!r})\n"
        "    assert cpu.load()[0] is not None\n"
        "    print(sorted(os.sched_getaffinity(0)))\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
    )
    env = {**os.environ, "GOMP_CPU_AFFINITY": " ".join(map(str, reversed(cores)))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(cores)


def test_runs_from_blocks_and_slots():
    r = block_runs([7, 2, 9], 4, first_token=1, num_tokens=9, block_offset=3)
    assert r.tolist() == [[0, 1, 7, 3, 1], [0, 2, 2, 0, 4], [0, 6, 9, 0, 4]]
    assert slot_runs([29, 30, 31, 8, 9, 10, 11, 36], 8, chunk=2, first_token=5).tolist() == [
        [2, 5, 3, 5, 3], [2, 8, 1, 0, 4], [2, 12, 4, 4, 1]]
    assert slot_runs([5, 4], 8).tolist() == [[0, 0, 0, 5, 1], [0, 1, 0, 4, 1]]  # not ascending: two runs
    with pytest.raises(InvalidArgumentError, match="negative"):
        slot_runs([3, -1], 8)
    with pytest.raises(InvalidArgumentError, match="hold"):
        block_runs([1], 4, num_tokens=5)
