"""Chunk keys: deterministic across processes, chained over the prefix, seeded by layout and namespace."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.errors import InvalidArgumentError
from tierd.keys import KEY_BYTES, chunk_keys
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
