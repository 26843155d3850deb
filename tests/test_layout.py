from __future__ import annotations

import numpy as np
import pytest

from tierd.client import Client
from tierd.errors import InvalidArgumentError
from tierd.keys import chunk_keys
from tierd.layout import Layout


def test_sizes_and_shape():
    lay = Layout("m", "bfloat16", 12, 3, 64, chunk_tokens=256)
    assert lay.chunk_shape == (12, 2, 256, 192)
    assert lay.bytes_per_token == 12 * 2 * 3 * 64 * 2
    assert lay.chunk_bytes == lay.bytes_per_token * 256
    assert Layout.from_dict(lay.to_dict()) == lay
    assert len(lay.layout_id) == 16 and lay.layout_id == Layout.from_dict(lay.to_dict()).layout_id


@pytest.mark.parametrize("field,value,text", [
    ("dtype", "float64", "layout.dtype"), ("num_layers", 0, "num_layers"), ("head_dim", -1, "head_dim"),
    ("tp_rank", 2, "tp_rank"), ("kv_factor", 3, "kv_factor"), ("model", "", "model"), ("chunk_tokens", True, "chunk_tokens"),
])
def test_bad_fields(field, value, text):
    with pytest.raises(InvalidArgumentError, match=text):
        Layout(**{**Layout("m", "float16", 2, 2, 8).to_dict(), field: value})


def test_from_dict_rejects_unknown_and_missing():
    with pytest.raises(InvalidArgumentError, match="unknown field"):
        Layout.from_dict({**Layout("m", "float16", 2, 2, 8).to_dict(), "colour": 1})
    with pytest.raises(InvalidArgumentError):
        Layout.from_dict({"model": "m"})
    with pytest.raises(InvalidArgumentError):
        Layout.from_dict(["m"])  # type: ignore[arg-type]


# ------------------------------------------------------------------ the model fingerprint (issue 20, item 2)

FP_A, FP_B = "0123456789abcdef" * 2, "fedcba9876543210" * 2


def test_no_fingerprint_keeps_the_identity_ids_and_keys_of_before():
    """Pinned from the code before the field existed: stored chunks keep their keys."""
    lay = Layout("m", "float16", 2, 2, 8, chunk_tokens=16)
    assert lay.identity() == (b"tierd-layout-v1;model=m;dtype=float16;num_layers=2;num_kv_heads=2;head_dim=8;"
                              b"tp_rank=0;tp_size=1;chunk_tokens=16;kv_factor=2")
    assert lay.layout_id == "28b0c34396021e51"
    assert chunk_keys(lay, np.arange(32))[1].hex() == "6aa678004af2f73165875a5d96e1a182"
    assert "fingerprint" not in lay.to_dict()  # what a daemon from before the field accepts
    assert Layout.from_dict(lay.to_dict()) == lay


def test_different_fingerprints_give_different_layouts_and_keys():
    """Before the field, a model's weights changed behind the same name gave the same keys."""
    plain = Layout("m", "float16", 2, 2, 8, chunk_tokens=16)
    a, b = (Layout(**{**plain.to_dict(), "fingerprint": fp}) for fp in (FP_A, FP_B))
    assert len({plain.layout_id, a.layout_id, b.layout_id}) == 3
    tokens = np.arange(48)
    keys = [set(chunk_keys(lay, tokens)) for lay in (plain, a, b)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert a.identity().endswith(b";fingerprint=" + FP_A.encode())
    assert Layout.from_dict(a.to_dict()) == a and a.to_dict()["fingerprint"] == FP_A
    assert Layout(**{**plain.to_dict(), "fingerprint": FP_A}).layout_id == a.layout_id  # deterministic


@pytest.mark.parametrize("bad", ["XYZ", "0123456789ABCDEF", "abc", "a" * 65, "0123 4567", 12345678, None, "é" * 8])
def test_bad_fingerprint_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="layout.fingerprint"):
        Layout("m", "float16", 2, 2, 8, fingerprint=bad)


def test_daemon_registers_the_fingerprint_and_refuses_a_bad_one(daemon):
    lay = Layout("m", "float16", 2, 2, 8, chunk_tokens=16, fingerprint=FP_A)
    with Client.connect(daemon.socket, map_arena=False) as c:
        assert c.register_layout(lay) == lay.layout_id
        assert c._call("layouts")["layouts"][lay.layout_id]["fingerprint"] == FP_A
        with pytest.raises(InvalidArgumentError, match="layout.fingerprint"):
            c._call("register_layout", layout={**lay.to_dict(), "fingerprint": "not hex"})
        assert list(c._call("layouts")["layouts"]) == [lay.layout_id]  # nothing else registered
