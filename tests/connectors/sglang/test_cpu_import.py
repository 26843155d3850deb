"""`connectors.sglang.cpu_import` on a machine without triton and torchvision (as a fresh CI
machine is): stand-ins only while SGLang's modules import, gone afterwards, and SGLang's host
pools still work. Checked in the session's SGLang peer process (`peer.py`), which starts with
both packages made unimportable, whatever this machine has installed."""
from __future__ import annotations

from tests.connectors.sglang.conftest import Peer


def test_stand_ins_exist_only_while_sglang_imports(sglang_peer: Peer) -> None:
    out = sglang_peer.import_report  # the peer imported SGLang with triton and torchvision hidden
    assert out["stood_in"] == ["triton", "torchvision"]
    assert out["leftover"] == [] and out["importable"] is False and out["torch_sees_triton"] is False
    assert out["page_elements"] == 2 * 3 * 4 * 2 * 8  # kv x layers x page x heads x head_dim of pools.mha_pool
