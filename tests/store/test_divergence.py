"""`tierd.store.divergence`: how far a stored chunk is from freshly computed KV, and the bounds
the canary holds each kind of copy to. The lossy codecs' bounds are pinned here against the
worst row error measured on Gaussian KV with an attention-sink token, an outlier key channel
and a near-zero token, for the head shapes that give the fewest values per row."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tierd.codecs import get_codec
from tierd.layout import Layout
from tierd.store.divergence import LOSSY_BOUNDS, UNKNOWN_LOSSY_BOUND, codec_bound, compare


def chunk(layout: Layout, seed: int) -> bytes:
    x = np.random.default_rng(seed).standard_normal(layout.chunk_shape).astype(np.float32)
    x[:, :, 0, :] *= 30  # an attention sink: one token many times the others' norm
    x[:, 0, :, 5] *= 20  # an outlier key channel
    x[:, 1, 7, :] *= 0.01  # a near-zero value row
    return torch.from_numpy(x).to(getattr(torch, layout.dtype)).contiguous().view(torch.uint8).numpy().tobytes()


def diff(layout: Layout, a: bytes, b: bytes):
    return compare(memoryview(a), memoryview(b), layout)


def test_identical_bytes_are_exact():
    layout = Layout("m", "bfloat16", 2, 2, 64, chunk_tokens=32)
    a = chunk(layout, 1)
    d = diff(layout, a, bytes(a))
    assert d.exact and d.error == 0.0 and not d.diverged(0.0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_wrong_chunks_are_off_by_their_whole_size(dtype):
    layout = Layout("m", dtype, 2, 2, 64, chunk_tokens=32)
    a, other = chunk(layout, 1), chunk(layout, 2)
    assert diff(layout, a, bytes(len(a))).error == pytest.approx(1.0, abs=1e-6)  # zeros
    assert diff(layout, a, other).error > 1.0  # another chunk's KV
    page = bytearray(a)
    page[4096:8192] = bytes(4096)  # one page of a chunk: still the whole size of the rows it hits
    assert diff(layout, a, bytes(page)).error >= 0.99


def test_rounding_is_a_small_relative_error():
    layout = Layout("m", "float32", 2, 2, 64, chunk_tokens=32)
    a = np.frombuffer(chunk(layout, 1), np.float32)
    d = diff(layout, a.tobytes(), (a * np.float32(1 + 1e-5)).tobytes())
    assert not d.exact and 0 < d.error < 2e-5 and d.diverged(0.0) and not d.diverged(1e-4)


def test_non_finite_values():
    layout = Layout("m", "float32", 1, 1, 8, chunk_tokens=4)
    a = np.ones(64, np.float32)  # [1 layer, K and V, 4 tokens, 8]
    b = a.copy()
    a[3] = b[3] = np.nan  # NaN in both copies at the same place: equal
    b[5] = 2.0
    assert math.isfinite(diff(layout, a.tobytes(), b.tobytes()).error)
    c = a.copy()
    c[7] = np.nan  # NaN in one copy only
    assert diff(layout, a.tobytes(), c.tobytes()).error == math.inf
    random_bits = np.random.default_rng(0).integers(0, 256, a.nbytes, dtype=np.uint8).tobytes()
    assert diff(layout, a.tobytes(), random_bits).diverged(UNKNOWN_LOSSY_BOUND)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_bytes_are_read_as_their_values(dtype):
    layout = Layout("m", dtype, 1, 1, 8, chunk_tokens=4)
    x = torch.linspace(-3, 3, 64).to(getattr(torch, dtype))
    a = x.view(torch.uint8).numpy().tobytes()
    b = (x.float() * 2).to(getattr(torch, dtype)).view(torch.uint8).numpy().tobytes()
    assert diff(layout, a, b).error == pytest.approx(1.0, rel=0.05)  # every row twice its size


def test_codec_bounds():
    assert codec_bound("") == codec_bound("raw") == codec_bound("zstd:3") == codec_bound("zstd-shuffle:-1") == 0.0
    assert codec_bound("int8k-tq3v") == LOSSY_BOUNDS["int8k-tq3v"] > codec_bound("int8k-tq4v") > 0
    assert codec_bound("int2-from-the-future") == UNKNOWN_LOSSY_BOUND


@pytest.mark.parametrize("codec", sorted(LOSSY_BOUNDS))
@pytest.mark.parametrize("heads,head_dim", [(1, 32), (2, 64), (8, 128)])
def test_lossy_codecs_stay_within_their_bound_and_wrong_chunks_do_not(codec, heads, head_dim):
    layout = Layout("m", "bfloat16", 4, heads, head_dim, chunk_tokens=256)
    a = chunk(layout, 1)
    c = get_codec(codec)
    out = bytearray(len(a))
    c.decode(c.encode(a, layout), layout, memoryview(out))
    error = diff(layout, a, bytes(out)).error
    assert 0 < error < LOSSY_BOUNDS[codec] * 0.75, error  # measured worst: 0.33 (tq3v), 0.21 (tq4v)
    assert diff(layout, a, chunk(layout, 2)).diverged(LOSSY_BOUNDS[codec])


def test_chunks_of_the_wrong_size_are_refused():
    layout = Layout("m", "float32", 1, 1, 8, chunk_tokens=4)
    with pytest.raises(ValueError, match="layout"):
        compare(memoryview(bytes(8)), memoryview(bytes(8)), layout)
