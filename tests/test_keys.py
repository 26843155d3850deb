"""Chunk keys: deterministic across processes, chained over the prefix, seeded by layout and namespace;
per-chunk extras (adapter, images, salt) change a chunk's key and every key after it."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.keys import KEY_BYTES, chunk_keys, encode_extras, seed_key
from tierd.layout import Layout

L = Layout("llama-test", "bfloat16", 4, 2, 64, chunk_tokens=16)
_PRINT_KEYS = (
    "from tierd.layout import Layout; from tierd.keys import chunk_keys; "
    "L = Layout('llama-test', 'bfloat16', 4, 2, 64, chunk_tokens=16); "
    "print(','.join(k.hex() for k in chunk_keys(L, list(range(1000, 1100)), 'ns1')))"
)


def test_keys_identical_across_interpreter_processes():
    outs = {
        subprocess.run([sys.executable, "-c", _PRINT_KEYS], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert outs.pop().split(",") == [k.hex() for k in chunk_keys(L, list(range(1000, 1100)), "ns1")]


def test_chunking_and_partial_chunk():
    keys = chunk_keys(L, list(range(40)))
    assert len(keys) == 2 and all(len(k) == KEY_BYTES for k in keys)
    assert len(chunk_keys(L, list(range(40)), include_partial=True)) == 3
    assert chunk_keys(L, list(range(15))) == []


def test_prefix_sharing_and_divergence():
    a = chunk_keys(L, list(range(64)))
    b = chunk_keys(L, list(range(32)) + [7] * 32)
    assert a[:2] == b[:2] and a[2] != b[2]
    # the same chunk content after a different prefix is a different key (keys name prefixes)
    c = chunk_keys(L, [5] * 16 + list(range(16, 32)))
    assert c[1] != a[1]


@pytest.mark.parametrize("change", [{"model": "other"}, {"dtype": "float16"}, {"tp_rank": 1, "tp_size": 2},
                                    {"num_kv_heads": 4}, {"head_dim": 128}, {"num_layers": 5}])
def test_layout_identity_seeds_keys(change):
    other = Layout(**{**L.to_dict(), **change})
    assert chunk_keys(other, list(range(32))) != chunk_keys(L, list(range(32)))


def test_namespace_seeds_keys():
    assert chunk_keys(L, list(range(32)), "a") != chunk_keys(L, list(range(32)), "b")


def test_torch_numpy_and_list_inputs_agree():
    toks = list(range(100, 164))
    ref = chunk_keys(L, toks)
    assert chunk_keys(L, np.array(toks, dtype=np.int32)) == ref
    assert chunk_keys(L, torch.tensor(toks)) == ref


@pytest.mark.parametrize("bad", [[[1, 2]], np.zeros((2, 16)), [0.5] * 16])
def test_bad_tokens(bad):
    with pytest.raises(InvalidArgumentError):
        chunk_keys(L, bad)


@pytest.mark.parametrize("ns", ["", "a\x00b", 5])
def test_bad_namespace(ns):
    with pytest.raises(InvalidArgumentError, match="namespace"):
        chunk_keys(L, list(range(16)), ns)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=100), st.integers(0, 100))
def test_keys_depend_only_on_the_prefix(tokens, cut):
    full = chunk_keys(L, tokens)
    cut = min(cut, len(tokens))
    assert chunk_keys(L, tokens[:cut]) == full[: cut // L.chunk_tokens]


# ------------------------------------------------------------------ extras (issue 20, item 1)
# On the code before extras, every test below fails with TypeError: chunk_keys() got an
# unexpected keyword argument 'extras' (or ImportError for encode_extras).

TOKENS = list(range(500, 580))  # five chunks of 16


def _x(*items: tuple) -> bytes:
    out = encode_extras(items)
    assert out is not None
    return out


def test_without_extras_keys_are_todays_chain():
    """No extras, or None for every chunk, gives exactly the documented chain: key_i =
    blake2b-128(key_{i-1} || tokens as int64 LE), key_{-1} the seed; so stored chunks keep their keys."""
    want, prev = [], seed_key(L, "ns1")
    for i in range(5):
        prev = hashlib.blake2b(prev + np.asarray(TOKENS[i * 16 : (i + 1) * 16], "<i8").tobytes(), digest_size=16).digest()
        want.append(prev)
    assert chunk_keys(L, TOKENS, "ns1") == want
    assert chunk_keys(L, TOKENS, "ns1", extras=[None] * 5) == want
    assert chunk_keys(L, TOKENS, "ns1", extras=[None] * 9) == want  # longer than needed is fine


def test_extras_change_the_key_of_their_chunk_and_every_later_one():
    plain = chunk_keys(L, TOKENS)
    a = chunk_keys(L, TOKENS, extras=[None, None, _x(("mm", "img-a", 3, 40)), None, None])
    b = chunk_keys(L, TOKENS, extras=[None, None, _x(("mm", "img-b", 3, 40)), None, None])
    assert a[:2] == plain[:2] == b[:2]
    assert all(x != y for x, y in zip(a[2:], plain[2:])) and all(x != y for x, y in zip(a[2:], b[2:]))
    assert len(set(a) | set(b) | set(plain)) == 2 + 3 * 3


def test_same_extras_give_the_same_keys():
    extras = [_x(("lora", "ad", "f00d")) for _ in range(5)]
    again = [_x(("lora", "ad", "f00d")) for _ in range(5)]
    assert chunk_keys(L, TOKENS, extras=extras) == chunk_keys(L, TOKENS, extras=again)


def test_a_salt_in_chunk_zero_changes_every_key():
    salted = chunk_keys(L, TOKENS, extras=[_x(("cache_salt", "tenant-1"))] + [None] * 4)
    other = chunk_keys(L, TOKENS, extras=[_x(("cache_salt", "tenant-2"))] + [None] * 4)
    plain = chunk_keys(L, TOKENS)
    assert len(set(salted) | set(other) | set(plain)) == 15


def test_extras_cannot_collide_with_more_tokens():
    """A partial chunk with extras is hashed in its own domain: it is not the key of some longer
    token run without extras (here: extras bytes that are themselves whole int64 tokens)."""
    extra = _x(("t", b"\x00" * 8))
    toks = list(range(3))
    with_extra = chunk_keys(L, toks, include_partial=True, extras=[extra])
    as_tokens = np.frombuffer(np.asarray(toks, "<i8").tobytes() + extra.ljust(-(-len(extra) // 8) * 8, b"\0"), "<i8")
    assert with_extra != chunk_keys(L, as_tokens, include_partial=True)
    assert with_extra != chunk_keys(L, toks, include_partial=True)


def test_encode_extras_is_canonical_and_typed():
    assert encode_extras([]) is None
    assert _x(("mm", "i", 1, 2), ("cache_salt", "s")) == _x(["mm", "i", 1, 2], ["cache_salt", "s"])
    assert _x(("mm", "i", 1, 2), ("cache_salt", "s")) != _x(("cache_salt", "s"), ("mm", "i", 1, 2))
    assert _x(("x", "1")) != _x(("x", 1)) != _x(("x", b"1"))
    code = "from tierd.keys import encode_extras; print(encode_extras([('lora', 'a', 'ff'), ('mm', 'h', -3, 7)]).hex())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "7", "PATH": ""}).stdout.strip()
    assert out == _x(("lora", "a", "ff"), ("mm", "h", -3, 7)).hex()


@pytest.mark.parametrize("bad", [("x", 1.5), ("x", True), ("x", None), ("x", {"a": 1}), ("x", object()),
                                 ("x", 1 << 64), ("x", "\ud800")])
def test_encode_extras_refuses_values_without_one_encoding(bad):
    with pytest.raises(InvalidArgumentError, match="extra key value"):
        encode_extras([bad])


def test_bad_extras_are_refused():
    with pytest.raises(InvalidArgumentError, match="extras cover 2 chunks, but the tokens make 5"):
        chunk_keys(L, TOKENS, extras=[None, None])
    with pytest.raises(InvalidArgumentError, match="extras\\[1\\]"):
        chunk_keys(L, TOKENS, extras=[None, "salt", None, None, None])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**31 - 1), min_size=0, max_size=100), st.integers(0, 100),
       st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=20)), min_size=7, max_size=7))
def test_keys_with_extras_depend_only_on_the_prefix(tokens, cut, extras):
    full = chunk_keys(L, tokens, extras=extras)
    cut = min(cut, len(tokens))
    assert chunk_keys(L, tokens[:cut], extras=extras) == full[: cut // L.chunk_tokens]
