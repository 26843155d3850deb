"""`tierd inspect KEY` names the model fingerprint a chunk was stored under (issue 20, item 2).

Before, inspect showed only the layout id: which weights a chunk's KV came from could not be
told (the fields `model`, `fingerprint` and `layout_known` were missing, and the text output had
no fingerprint line)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.conftest import payload_for
from tierd.client import Client
from tierd.keys import chunk_keys
from tierd.layout import Layout

FP = "00112233445566778899aabbccddeeff"
WITH = Layout("org/model", "float16", 2, 2, 8, chunk_tokens=16, fingerprint=FP)
WITHOUT = Layout("org/model", "float16", 2, 2, 8, chunk_tokens=16)


def tierd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierd", *args], capture_output=True, text=True, timeout=60)


def put(socket: str, layout: Layout) -> bytes:
    key = chunk_keys(layout, np.arange(16))[0]
    with Client.connect(socket) as c:
        c.put_chunks(layout, [key], [payload_for(key, layout.chunk_bytes)])
    return key


def test_inspect_shows_the_fingerprint_and_says_when_it_is_unknown(daemon_factory, tmp_path):
    nvme = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme)
    key, plain = put(d.socket, WITH), put(d.socket, WITHOUT)
    info = json.loads(tierd("inspect", "--socket", d.socket, "--json", key.hex()).stdout)
    assert info["layout_id"] == WITH.layout_id and info["layout_known"] is True
    assert info["fingerprint"] == FP and info["model"] == "org/model"
    text = tierd("inspect", "--socket", d.socket, key.hex()).stdout
    assert f"fingerprint  {FP}" in text and "model        org/model" in text
    text = tierd("inspect", "--socket", d.socket, plain.hex()).stdout
    assert "fingerprint  none (its layout was registered without a model fingerprint)" in text

    assert d.stop() == 0  # graceful: the chunks are written down to NVMe
    d = daemon_factory(nvme_dir=nvme)  # knows the chunks from NVMe, not their layouts
    info = json.loads(tierd("inspect", "--socket", d.socket, "--json", key.hex()).stdout)
    assert info["tiers"] == ["nvme"] and info["layout_id"] == WITH.layout_id
    assert info["layout_known"] is False and info["fingerprint"] is None
    r = tierd("inspect", "--socket", d.socket, key.hex())
    assert r.returncode == 0 and f"fingerprint  unknown: layout {WITH.layout_id} is not registered" in r.stdout
    with Client.connect(d.socket, map_arena=False) as c:
        c.register_layout(WITH)  # an engine connects
        assert c.inspect(key)["fingerprint"] == FP
