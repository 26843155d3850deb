"""Codecs: lossless round trips, quantisation error bounds, ratios, and every way a blob can be
wrong raising CodecError (a miss) instead of decoding to garbage."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.codecs import HEADER_BYTES, SPECS, CodecHeader, codec_for_blob, get_codec, read_header
from tierd.codecs.base import CodecId
from tierd.codecs.quant import (CENTROIDS, dequantize_keys, dequantize_values, fwht, hadamard_matrix, pack_bits,
                                quantize_keys, quantize_values, random_signs, unpack_bits)
from tierd.errors import CodecError
from tierd.layout import Layout

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LOSSLESS = ["raw", "zstd", "zstd:1", "zstd:9", "zstd:-3", "zstd-shuffle", "zstd-shuffle:1", "zstd-shuffle:19"]
QUANT = ["int8k-tq3v", "int8k-tq4v"]


def small(dtype: str = "bfloat16", **kw: object) -> Layout:
    """4 layers, 2 KV heads, head_dim 128, 32 tokens: 128 KiB in bf16, quick to encode."""
    args = {"num_layers": 4, "num_kv_heads": 2, "head_dim": 128, "chunk_tokens": 32, **kw}
    return Layout("test-model", dtype, **args)  # type: ignore[arg-type]


def kv_like(layout: Layout, seed: int = 0, outlier_channels: int = 4, outlier_gain: float = 20.0) -> torch.Tensor:
    """Gaussian KV in float32, canonical shape; a few key channels (per head) scaled by `outlier_gain`,
    as real keys have."""
    gen = torch.Generator().manual_seed(seed)
    chunk = torch.randn(layout.chunk_shape, generator=gen)
    keys = chunk[:, 0].view(layout.num_layers, layout.chunk_tokens, layout.num_kv_heads, layout.head_dim)
    channels = torch.randperm(layout.head_dim, generator=gen)[:outlier_channels]
    keys[..., channels] *= outlier_gain
    return chunk


def to_bytes(chunk: torch.Tensor, layout: Layout) -> bytes:
    return chunk.to(DTYPES[layout.dtype]).contiguous().view(torch.uint8).numpy().tobytes()


def from_bytes(data: bytes | bytearray, layout: Layout) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=DTYPES[layout.dtype]).view(layout.chunk_shape).float()


def round_trip(spec: str, payload: bytes, layout: Layout) -> tuple[bytes, bytearray]:
    codec = get_codec(spec)
    blob = codec.encode(payload, layout)
    assert len(blob) <= codec.max_encoded_bytes(layout)
    out = bytearray(layout.chunk_bytes)
    codec.decode(blob, layout, memoryview(out))
    return blob, out


# -- lossless codecs --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("spec", LOSSLESS)
def test_lossless_round_trip_is_byte_exact(spec: str, dtype: str) -> None:
    layout = small(dtype)
    random_bytes = np.random.default_rng(1).integers(0, 256, layout.chunk_bytes, dtype=np.uint8).tobytes()
    realistic = to_bytes(kv_like(layout), layout)
    for payload in (random_bytes, realistic):
        _, out = round_trip(spec, payload, layout)
        assert bytes(out) == payload
    assert get_codec(spec).lossless


def test_shuffle_helps_zstd_on_bf16_kv() -> None:
    """The claim in tierd/codecs/zstd.py: splitting bf16 into byte planes compresses better."""
    layout = small("bfloat16", chunk_tokens=128)
    payload = to_bytes(kv_like(layout), layout)
    plain, _ = round_trip("zstd:3", payload, layout)
    shuffled, _ = round_trip("zstd-shuffle:3", payload, layout)
    assert len(shuffled) < 0.95 * len(plain)
    assert len(payload) / len(shuffled) > 1.2


def test_codec_for_blob_decodes_whatever_wrote_it() -> None:
    layout = small()
    payload = to_bytes(kv_like(layout), layout)
    for spec in [*LOSSLESS, *QUANT]:
        blob = get_codec(spec).encode(payload, layout)
        codec = codec_for_blob(blob)
        assert codec.name == get_codec(spec).name
        out = bytearray(layout.chunk_bytes)
        codec.decode(blob, layout, memoryview(out))
        expected = bytearray(layout.chunk_bytes)
        get_codec(spec).decode(blob, layout, memoryview(expected))
        assert out == expected


def test_zstd_levels_share_one_format() -> None:
    """Any zstd codec decodes any zstd blob: level and shuffle come from the header."""
    layout = small()
    payload = to_bytes(kv_like(layout), layout)
    blob = get_codec("zstd-shuffle:19").encode(payload, layout)
    out = bytearray(layout.chunk_bytes)
    get_codec("zstd:1").decode(blob, layout, memoryview(out))
    assert bytes(out) == payload
    assert read_header(blob).level == 19 and read_header(blob).flags == 1


# -- the quantised codecs ----------------------------------------------------------------------------

def quant_errors(spec: str, layout: Layout, chunk: torch.Tensor) -> dict[str, float]:
    """Relative MSE of keys and values, mean per-vector cosine of values, against the input as stored
    in the layout's dtype."""
    exact = from_bytes(to_bytes(chunk, layout), layout)
    _, out = round_trip(spec, to_bytes(chunk, layout), layout)
    got = from_bytes(out, layout)
    d = layout.head_dim
    rel = {name: float(((got[:, i] - exact[:, i]) ** 2).sum() / (exact[:, i] ** 2).sum())
           for i, name in enumerate(("keys", "values"))}
    cos = torch.nn.functional.cosine_similarity(got[:, 1].reshape(-1, d), exact[:, 1].reshape(-1, d), dim=-1)
    return {**rel, "cos_mean": float(cos.mean()), "cos_min": float(cos.min())}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_quantised_error_bounds_on_gaussian_kv(dtype: str) -> None:
    layout = small(dtype)
    chunk = kv_like(layout, seed=3)
    e3 = quant_errors("int8k-tq3v", layout, chunk)
    e4 = quant_errors("int8k-tq4v", layout, chunk)
    # Lloyd-Max 3-bit MSE of N(0,1) is 0.0345; 4-bit 0.0095
    assert e3["values"] <= 0.04
    assert e3["cos_mean"] >= 0.98
    assert e4["values"] <= 0.012 and e4["values"] < e3["values"] / 3
    assert e4["cos_mean"] >= 0.995
    # keys with x20 outlier channels: the per-group scale keeps the error small
    assert e3["keys"] <= 1e-3 and e4["keys"] == e3["keys"]
    assert not get_codec("int8k-tq3v").lossless


def test_per_group_key_scales_beat_a_per_tensor_scale_on_outliers() -> None:
    """Why the groups exist: with a few x20 channels, one scale per tensor fails the 1e-3 bound."""
    layout = small("float32")
    keys = kv_like(layout, seed=4, outlier_gain=50.0)[:, 0].reshape(-1)
    errors = {}
    for group in (64, keys.numel()):
        codes, scales = quantize_keys(keys, group)
        errors[group] = float(((dequantize_keys(codes, scales, group) - keys) ** 2).sum() / (keys ** 2).sum())
    assert errors[64] <= 1e-3 < errors[keys.numel()]


def test_near_constant_and_zero_value_vectors() -> None:
    """The random signs make a constant vector spread over the Hadamard rows; a zero vector stays zero."""
    layout = small("float32")
    chunk = kv_like(layout, seed=5)
    values = chunk[:, 1].view(layout.num_layers, -1, layout.head_dim)  # [layer, vector, d], a view
    values[:, 0::2] = 3.0 + 0.01 * values[:, 0::2]  # near-constant
    values[:, 1::4] = 0.0
    _, out = round_trip("int8k-tq3v", to_bytes(chunk, layout), layout)
    got = from_bytes(out, layout)[:, 1].reshape(layout.num_layers, -1, layout.head_dim)
    cos = torch.nn.functional.cosine_similarity(got[:, 0::2], values[:, 0::2], dim=-1)
    assert float(cos.min()) >= 0.97
    assert torch.count_nonzero(got[:, 1::4]) == 0


def test_ratio_of_a_realistic_bf16_chunk() -> None:
    """32 layers, 8 KV heads, head_dim 128, 256 tokens (32 MiB bf16): header, scales, norms counted."""
    layout = Layout("llama-8b-like", "bfloat16", 32, 8, 128, chunk_tokens=256)
    chunk = kv_like(layout, seed=6)
    payload = to_bytes(chunk, layout)
    blob = get_codec("int8k-tq3v").encode(payload, layout)
    ratio = layout.chunk_bytes / len(blob)
    assert ratio >= 2.8
    assert len(blob) == get_codec("int8k-tq3v").max_encoded_bytes(layout)  # the body size is exact
    assert layout.chunk_bytes / get_codec("int8k-tq4v").max_encoded_bytes(layout) >= 2.5


@pytest.mark.parametrize("spec", QUANT)
def test_blocked_encoding_matches_one_block(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU path encodes a few layers at a time; the blob must not depend on the block size."""
    layout = small(num_layers=5)
    payload = to_bytes(kv_like(layout, seed=7), layout)
    whole = get_codec(spec).encode(payload, layout)
    monkeypatch.setattr("tierd.codecs.quant.CPU_BLOCK_VALUES", 2 * layout.chunk_tokens * layout.num_kv_heads * 128)
    assert len(get_codec(spec)._blocks(layout)) == 3  # layers 0-1, 2-3, 4
    assert get_codec(spec).encode(payload, layout) == whole
    blocked, single = bytearray(layout.chunk_bytes), bytearray(layout.chunk_bytes)
    get_codec(spec).decode(whole, layout, memoryview(blocked))
    monkeypatch.undo()
    get_codec(spec).decode(whole, layout, memoryview(single))
    assert blocked == single


@pytest.mark.parametrize("spec", QUANT)
def test_tiny_head_dim_pads_the_packing(spec: str) -> None:
    """3 layers x 1 token x 1 head x head_dim 4: 12 values, not a multiple of 8 (3-bit padding)."""
    layout = Layout("tiny", "float32", 3, 1, 4, chunk_tokens=1)
    chunk = kv_like(layout, seed=8, outlier_channels=0)
    blob = get_codec(spec).encode(to_bytes(chunk, layout), layout)
    assert len(blob) == get_codec(spec).max_encoded_bytes(layout)
    out = bytearray(layout.chunk_bytes)
    get_codec(spec).decode(blob, layout, memoryview(out))
    got = from_bytes(out, layout)
    assert float(((got[:, 0] - chunk[:, 0]) ** 2).sum() / (chunk[:, 0] ** 2).sum()) <= 1e-3
    # the padded packing loses nothing: the values are what the quantiser itself gives back
    bits = int(spec[8])
    indices, norms = quantize_values(chunk[:, 1].reshape(-1, 4), bits)
    assert torch.allclose(got[:, 1].reshape(-1, 4), dequantize_values(indices, norms, bits, 4), atol=1e-6)


@pytest.mark.parametrize("layout_kw, match", [
    ({"head_dim": 96}, "power of two"),
    ({"kv_factor": 1}, "kv_factor"),
])
def test_quantised_codec_refuses_layouts_it_cannot_encode(layout_kw: dict[str, int], match: str) -> None:
    layout = small(**layout_kw)
    with pytest.raises(CodecError, match=match):
        get_codec("int8k-tq3v").encode(bytes(layout.chunk_bytes), layout)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "int8", "uint8"])
def test_quantised_codec_refuses_other_dtypes(dtype: str) -> None:
    layout = small(dtype)
    with pytest.raises(CodecError, match="dtype"):
        get_codec("int8k-tq4v").encode(bytes(layout.chunk_bytes), layout)


def test_fwht_is_the_hadamard_transform_and_self_inverse() -> None:
    x = torch.randn(5, 3, 256, dtype=torch.float64)
    h = hadamard_matrix(256).double()
    assert torch.allclose(fwht(x), x @ h)
    assert torch.allclose(fwht(fwht(x)) / 256, x)
    assert torch.equal(h @ h, 256 * torch.eye(256, dtype=torch.float64))


def test_random_signs_are_fixed_and_mixed() -> None:
    signs = random_signs(128)
    assert torch.equal(signs, random_signs(128))
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert 40 <= int((signs > 0).sum()) <= 88


@pytest.mark.parametrize("bits", [3, 4])
def test_lloyd_max_tables_are_fixed_points_of_lloyds_iteration(bits: int) -> None:
    """Each centroid is the mean of N(0,1) over its cell (the Lloyd-Max condition), to 1e-3."""
    c = CENTROIDS[bits]
    assert len(c) == 2 ** bits and list(c) == sorted(c) and all(math.isclose(a, -b) for a, b in zip(c, c[::-1]))
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    edges = [-math.inf, *[(a + b) / 2 for a, b in zip(c, c[1:])], math.inf]
    for i, centroid in enumerate(c):
        mean = (pdf(edges[i]) - pdf(edges[i + 1])) / (cdf(edges[i + 1]) - cdf(edges[i]))
        assert abs(mean - centroid) < 1e-3


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([3, 4]), values=st.lists(st.integers(0, 15), min_size=1, max_size=200))
def test_bit_packing_round_trips(bits: int, values: list[int]) -> None:
    indices = torch.tensor(values, dtype=torch.uint8) % (1 << bits)
    packed = pack_bits(indices, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == ((len(values) + 7) // 8 * 3 if bits == 3 else (len(values) + 1) // 2)
    assert torch.equal(unpack_bits(packed, bits, len(values)), indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path_matches_cpu() -> None:
    layout = small()
    payload = to_bytes(kv_like(layout), layout)
    cpu, gpu = get_codec("int8k-tq3v"), get_codec("int8k-tq3v", device="cuda")
    blob = gpu.encode(payload, layout)
    out_gpu, out_cpu = bytearray(layout.chunk_bytes), bytearray(layout.chunk_bytes)
    gpu.decode(blob, layout, memoryview(out_gpu))
    cpu.decode(blob, layout, memoryview(out_cpu))
    assert torch.allclose(from_bytes(out_gpu, layout), from_bytes(out_cpu, layout), rtol=1e-2, atol=1e-2)


# -- blobs that must not decode ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    layout = small()
    payload = to_bytes(kv_like(layout), layout)
    return {spec: get_codec(spec).encode(payload, layout) for spec in ("raw", "zstd", "int8k-tq3v", "int8k-tq4v")}


def decode_fails(spec: str, blob: bytes, layout: Layout, match: str) -> None:
    """Decoding raises CodecError matching `match` and leaves `out` as it was (no garbage)."""
    out = bytearray(b"\xa5" * layout.chunk_bytes)
    with pytest.raises(CodecError, match=match):
        get_codec(spec).decode(blob, layout, memoryview(out))
    assert out == bytearray(b"\xa5" * layout.chunk_bytes)


@pytest.mark.parametrize("spec", ["raw", "zstd", "int8k-tq3v"])
def test_wrong_layout_is_refused(spec: str, encoded: dict[str, bytes]) -> None:
    other = Layout("other-model", "bfloat16", 4, 2, 128, chunk_tokens=32)  # same size, another id
    assert other.chunk_bytes == small().chunk_bytes
    decode_fails(spec, encoded[spec], other, r"layout_id: expected '[0-9a-f]{16}', found")


@pytest.mark.parametrize("writer, reader, match", [
    ("raw", "zstd", "codec: expected zstd .*found raw"),
    ("zstd", "raw", "codec: expected raw .*found zstd"),
    ("zstd", "int8k-tq3v", "codec: expected int8k_tq .*found zstd"),
    ("int8k-tq3v", "zstd", "codec: expected zstd .*found int8k_tq"),
    ("int8k-tq3v", "int8k-tq4v", "bits: expected 4, found 3"),
    ("int8k-tq4v", "int8k-tq3v", "bits: expected 3, found 4"),
])
def test_another_codecs_blob_is_refused(writer: str, reader: str, match: str, encoded: dict[str, bytes]) -> None:
    decode_fails(reader, encoded[writer], small(), match)


@pytest.mark.parametrize("spec", ["raw", "zstd", "int8k-tq3v"])
def test_truncated_or_padded_blobs_are_refused(spec: str, encoded: dict[str, bytes]) -> None:
    blob = encoded[spec]
    decode_fails(spec, blob[:-1], small(), "truncated: body_length expected")
    decode_fails(spec, blob[:HEADER_BYTES // 2], small(), "truncated: .* shorter than the 64-byte codec header")
    decode_fails(spec, b"", small(), "truncated")
    decode_fails(spec, blob + b"\0", small(), r"length \(header \+ body_length\): expected")


@pytest.mark.parametrize("spec", ["raw", "zstd", "int8k-tq3v"])
def test_corrupted_blobs_are_refused(spec: str, encoded: dict[str, bytes]) -> None:
    blob = encoded[spec]
    for offset in (HEADER_BYTES, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[offset] ^= 0x10
        decode_fails(spec, bytes(bad), small(), "body checksum: expected")
    for offset in (5, 8, 20, 33, 41, 50, 60):  # codec id, level, layout id, lengths, checksums
        bad = bytearray(blob)
        bad[offset] ^= 0x01
        decode_fails(spec, bytes(bad), small(), "header checksum: expected")
    decode_fails(spec, b"XKVC" + blob[4:], small(), "magic: expected b'TKVC', found b'XKVC'")


def test_payload_and_out_sizes_are_checked() -> None:
    layout = small()
    codec = get_codec("zstd")
    with pytest.raises(CodecError, match="payload of 10 bytes, expected layout.chunk_bytes"):
        codec.encode(b"0123456789", layout)
    blob = codec.encode(bytes(layout.chunk_bytes), layout)
    with pytest.raises(CodecError, match="`out` is 10 bytes"):
        codec.decode(blob, layout, memoryview(bytearray(10)))
    with pytest.raises(CodecError, match="writable"):
        codec.decode(blob, layout, memoryview(bytes(layout.chunk_bytes)))


# -- specs and the header ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["raw", "zstd", "zstd:1", "zstd:22", "zstd:-7", "zstd-shuffle", "zstd-shuffle:5",
                                  "int8k-tq3v", "int8k-tq4v", " ZSTD:3 "])
def test_good_specs(spec: str) -> None:
    codec = get_codec(spec)
    assert get_codec(codec.name).name == codec.name


@pytest.mark.parametrize("spec", ["", "zstd:", "zstd:0", "zstd:23", "zstd:-8", "zstd:x", "zstd:3.5", "zstd:+3",
                                  "zstd:1:2", "zstd-shuffle:", "lz4", "int8k-tq2v", "int8k-tq3", "raw:1",
                                  "zstd shuffle", None, 3])
def test_bad_specs_raise_codec_error_naming_the_spec(spec: object) -> None:
    with pytest.raises(CodecError) as info:
        get_codec(spec)  # type: ignore[arg-type]
    assert repr(spec) in str(info.value)
    assert all(valid in str(info.value) for valid in SPECS)


_VALID = re.compile(r"raw|int8k-tq[34]v|zstd(-shuffle)?(:(-[1-7]|[1-9]|1[0-9]|2[0-2]))?")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_any_spec_is_a_codec_or_a_codec_error(spec: str) -> None:
    if _VALID.fullmatch(spec.strip().lower()):
        assert get_codec(spec).name.split(":")[0] == spec.strip().lower().split(":")[0]
    else:
        with pytest.raises(CodecError):
            get_codec(spec)


@settings(max_examples=200, deadline=None)
@given(codec_id=st.integers(0, 255), codec_version=st.integers(0, 255),
       layout_id=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
       raw_length=st.integers(0, 2 ** 64 - 1), body_length=st.integers(0, 2 ** 64 - 1),
       body_xxh3=st.integers(0, 2 ** 64 - 1), flags=st.integers(0, 255), level=st.integers(-2 ** 31, 2 ** 31 - 1),
       group_size=st.integers(0, 65535), bits=st.integers(0, 255))
def test_header_round_trips(**fields: object) -> None:
    header = CodecHeader(**fields)  # type: ignore[arg-type]
    packed = header.pack()
    assert len(packed) == HEADER_BYTES
    assert CodecHeader.unpack(packed + b"body") == header


def test_header_refuses_out_of_range_fields() -> None:
    with pytest.raises(CodecError, match="out of range"):
        CodecHeader(codec_id=int(CodecId.RAW), codec_version=1, layout_id="0" * 16, raw_length=-1, body_length=0,
                    body_xxh3=0).pack()
    with pytest.raises(CodecError, match="16 ASCII"):
        CodecHeader(codec_id=1, codec_version=1, layout_id="abc", raw_length=0, body_length=0, body_xxh3=0).pack()
