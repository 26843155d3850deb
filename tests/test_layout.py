from __future__ import annotations

import pytest

from tierd.errors import InvalidArgumentError
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
