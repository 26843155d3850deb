"""SGLang page hashes → tierd keys: deterministic across processes, distinct per layout,
namespace and pipeline stage, and injective over page hashes."""
from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from sglang.srt.mem_cache.utils import get_hash_str

from connectors.sglang.keys import PageKeys
from tierd.keys import KEY_BYTES
from tierd.layout import Layout

LAYOUT = Layout("org/model", "bfloat16", 4, 2, 64, chunk_tokens=16)


def test_keys_follow_sglangs_chain_and_are_16_bytes() -> None:
    hashes = get_hash_str(list(range(64)), None, page_size=16)
    keys = PageKeys(LAYOUT, "default", "pp0of1")(hashes)
    assert len(keys) == 4 and all(len(k) == KEY_BYTES for k in keys) and len(set(keys)) == 4
    # SGLang's chain: the same tokens after a different first page give different page hashes
    other = get_hash_str([999] + list(range(1, 64)), None, page_size=16)
    assert set(PageKeys(LAYOUT, "default", "pp0of1")(other)).isdisjoint(keys)


def test_keys_are_the_same_in_another_process() -> None:
    hashes = get_hash_str(list(range(32)), None, page_size=16)
    code = (
        "from connectors.sglang.keys import PageKeys; from tierd.layout import Layout; import sys\n"
        "l = Layout('org/model', 'bfloat16', 4, 2, 64, chunk_tokens=16)\n"
        "print(','.join(k.hex() for k in PageKeys(l, 'default', 'pp0of1')(sys.argv[1:])))"
    )
    out = subprocess.run([sys.executable, "-c", code, *hashes], capture_output=True, text=True, check=True).stdout
    assert out.strip().split(",") == [k.hex() for k in PageKeys(LAYOUT, "default", "pp0of1")(hashes)]


def test_every_identity_field_changes_the_keys() -> None:
    hashes = get_hash_str(list(range(16)), None, page_size=16)
    base = PageKeys(LAYOUT, "default", "pp0of1")(hashes)[0]
    variants = [
        PageKeys(Layout("org/other", "bfloat16", 4, 2, 64, chunk_tokens=16), "default", "pp0of1"),
        PageKeys(Layout("org/model", "float16", 4, 2, 64, chunk_tokens=16), "default", "pp0of1"),
        PageKeys(Layout("org/model", "bfloat16", 4, 2, 64, tp_rank=1, tp_size=2, chunk_tokens=16), "default", "pp0of1"),
        PageKeys(Layout("org/model", "bfloat16", 4, 2, 64, tp_rank=0, tp_size=2, chunk_tokens=16), "default", "pp0of1"),
        PageKeys(Layout("org/model", "bfloat16", 4, 2, 64, chunk_tokens=32), "default", "pp0of1"),
        PageKeys(LAYOUT, "tenant", "pp0of1"),
        PageKeys(LAYOUT, "default", "pp1of2"),
    ]
    keys = [v(hashes)[0] for v in variants]
    assert base not in keys and len(set(keys)) == len(keys)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=70), min_size=2, max_size=20, unique=True))
def test_distinct_page_hashes_give_distinct_keys(hashes: list[str]) -> None:
    keys = PageKeys(LAYOUT, "default", "pp0of1")(hashes)
    assert len(set(keys)) == len(hashes)
