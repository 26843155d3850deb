"""The live correctness canary at the daemon (issue 20, item 3): the verify put compares fresh KV
with every copy the daemon holds, removes and counts what diverged per tier and layout, and
quarantines a tier that keeps diverging until `tierd quarantine clear`.

Chunks are corrupted behind the daemon's back the way its own checks cannot see: a DRAM slot
overwritten through the arena file (nothing re-reads a committed slot), an NVMe file rewritten
by tierd's own writer (valid header, checksum over other KV). Real daemon subprocesses, real
arena, real files.

On the code before the canary every test here fails at its first verify: `reserve` refused the
unknown argument `verify` (InvalidArgumentError), `stat` had no "canary", and there was no
`quarantine` op, option or command.
"""
from __future__ import annotations

import math
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL
from tests.waiting import wait_for
from tierd.client import Client
from tierd.config import Config
from tierd.errors import (
    ConfigError,
    InvalidArgumentError,
    NotReservedError,
    PermissionDeniedError,
    SlotNotWrittenError,
    UnknownLayoutError,
)
from tierd.keys import chunk_keys
from tierd.layout import Layout
from tierd.tiers.nvme.files import NvmeChunkFiles

#: float32, head_dim 64: a layout the quantised codecs can encode.
F32 = Layout("test-model-f32", "float32", 2, 2, 64, chunk_tokens=64)


def kv(layout: Layout, seed: int) -> np.ndarray:
    """Plausible KV of `layout` (Gaussian values in its dtype), as bytes."""
    values = np.random.default_rng(seed).standard_normal(layout.chunk_bytes // layout.itemsize).astype(np.float32)
    if layout.dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    assert layout.dtype == "float32"
    return values.view(np.uint8)


def keys_of(layout: Layout, n: int, seed: int = 0, namespace: str = "default") -> list[bytes]:
    return chunk_keys(layout, np.arange(n * layout.chunk_tokens) + seed * 100_000, namespace=namespace)


def store(c: Client, layout: Layout, keys: list[bytes], namespace: str | None = None) -> list[np.ndarray]:
    payloads = [kv(layout, i + int.from_bytes(k[:4], "little")) for i, k in enumerate(keys)]
    assert c.put_chunks(layout, keys, payloads, namespace) == len(keys)
    return payloads


def verify(c: Client, layout: Layout, keys: list[bytes], fresh: list[np.ndarray], **kw) -> dict:
    with c.verify(layout, keys, **kw) as batch:
        for i in batch.reserved:
            np.copyto(batch.view(i), fresh[i])
    return batch.result


def counts(c: Client, tier: str, layout: Layout) -> dict:
    return c.stat()["canary"]["by_tier"].get(tier, {}).get(layout.layout_id, {})


def tier_row(c: Client, name: str) -> dict:
    return next(t for t in c.stat()["tiers"] if t["name"] == name)


def overwrite_in_arena(c: Client, layout: Layout, keys: list[bytes]) -> None:
    """Zero the first page of each key's DRAM slot through this client's own mapping of the arena
    (a process of the daemon's user scribbling over shared memory, with no request)."""
    with c.get(layout, keys, prefix_only=False) as lease:
        slots = list(lease.slots)
    assert None not in slots and c.arena is not None
    for slot in slots:
        c.arena.view(slot, 4096)[:] = 0


def rewrite_nvme(nvme_dir: Path, layout: Layout, keys: list[bytes], codec: str = "raw") -> None:
    """Other KV in each key's NVMe file, under a valid header and checksum (tierd's own writer)."""
    files = NvmeChunkFiles(nvme_dir, codec=codec)
    files.codec.layouts = {layout.layout_id: layout}
    for i, key in enumerate(keys):
        other = kv(layout, 10_000 + i)
        files.write(key, layout.layout_id, "default", memoryview(other).cast("B"))


def tierd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierd", *args], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------- honest chunks


def test_honest_chunks_compare_byte_exact_and_stay_served(daemon_factory):
    d = daemon_factory(nvme="0")
    keys = keys_of(SMALL, 3)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        used = tier_row(c, "dram")["used_bytes"]
        result = verify(c, SMALL, keys, payloads)
        assert result == {"compared": 3, "diverged": 0, "skipped": 0, "quarantined": []}
        assert counts(c, "dram", SMALL) == {"compared": 3, "exact": 3, "within": 0, "diverged": 0, "max_error": 0.0}
        assert c.lookup(keys).prefix == 3
        assert c.get_chunks(SMALL, keys) == [p.tobytes() for p in payloads]
        assert tier_row(c, "dram")["used_bytes"] == used  # the scratch slots were freed
        assert not tier_row(c, "dram")["quarantined"]


def test_verify_reserve_hands_out_scratch_slots_only_for_stored_keys(daemon_factory):
    d = daemon_factory(nvme="0")
    stored, missing = keys_of(SMALL, 2), keys_of(SMALL, 1, seed=9)
    with Client.connect(d.socket) as c:
        store(c, SMALL, stored)
        batch = c.verify(SMALL, [stored[0], missing[0], stored[1]])
        assert batch.reserved == [0, 2]
        with c.get(SMALL, stored) as lease:
            assert not set(batch.slots) & set(lease.slots)  # scratch slots, not the chunks' own
        batch.abort()
        assert c.lookup(missing).prefix == 0  # a verify never stores anything


# ---------------------------------------------------------------------- corrupted DRAM


def test_a_dram_copy_overwritten_behind_the_daemons_back_is_found_and_quarantines_dram(daemon_factory):
    d = daemon_factory(nvme="0", extra=("--quarantine-after", "2"))
    keys = keys_of(SMALL, 3)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        overwrite_in_arena(c, SMALL, keys[:1])
        result = verify(c, SMALL, keys, payloads)
        assert (result["compared"], result["diverged"], result["quarantined"]) == (3, 1, [])
        assert c.lookup(keys).codes[0] == 255 and c.lookup(keys[1:]).prefix == 2  # the wrong copy is gone
        wait_for("the divergence log line", lambda: f"canary: chunk {keys[0].hex()} on tier dram diverged" in d.log())

        overwrite_in_arena(c, SMALL, keys[1:2])
        result = verify(c, SMALL, keys[1:], payloads[1:])
        assert (result["diverged"], result["quarantined"]) == (1, ["dram"])
        dram = counts(c, "dram", SMALL)
        assert (dram["compared"], dram["exact"], dram["diverged"], dram["max_error"]) == (5, 3, 2, 1.0)
        assert tier_row(c, "dram")["quarantined"]
        assert c.lookup(keys[2:]).prefix == 0  # an honest chunk in a quarantined tier is not served
        with c.get(SMALL, keys[2:]) as lease:
            assert lease.count == 0

        shown = tierd("quarantine", "--socket", d.socket)
        assert shown.returncode == 0 and "QUARANTINED dram" in shown.stdout, shown
        cleared = tierd("quarantine", "clear", "--socket", d.socket)
        assert cleared.returncode == 0 and "cleared: dram" in cleared.stdout, cleared
        assert c.lookup(keys[2:]).prefix == 1  # served again
        assert c.get_chunks(SMALL, keys[2:]) == [payloads[2].tobytes()]
        assert c.lookup(keys[:2]).prefix == 0  # the diverged copies stay removed
        assert c.quarantine()["quarantine"] == {"after": 2, "tiers": {}, "strikes": {}}


# ---------------------------------------------------------------------- corrupted NVMe


def test_an_nvme_file_with_a_valid_checksum_over_wrong_kv_is_found_and_quarantines_nvme(daemon_factory, tmp_path):
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme_dir, extra=("--quarantine-after", "2"))
    keys = keys_of(SMALL, 3)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        c.evict(tier="dram", everything=True)
        assert c.lookup(keys).tiers == ["nvme"] * 3
        rewrite_nvme(nvme_dir, SMALL, keys[:2])
        result = verify(c, SMALL, keys, payloads)
        assert (result["compared"], result["diverged"], result["quarantined"]) == (3, 2, ["nvme"])
        assert tier_row(c, "nvme")["corrupt"] == 0  # the tier's own checks saw nothing wrong
        assert counts(c, "nvme", SMALL)["diverged"] == 2 and not counts(c, "dram", SMALL)
        assert tier_row(c, "nvme")["quarantined"] and not tier_row(c, "dram")["quarantined"]
        wait_for("the wrong files deleted", lambda: not any(
            (nvme_dir / k[:1].hex() / f"{k.hex()}.chunk").exists() for k in keys[:2]))
        assert c.lookup(keys).prefix == 0  # the honest third chunk is on a quarantined tier
        assert c.quarantine()["quarantine"]["tiers"]["nvme"]["diverged"] == 2

        # the engine recomputed it: a put over the suspect copy is stored afresh, and served
        assert c.put_chunks(SMALL, keys[2:], payloads[2:]) == 1
        assert c.lookup(keys[2:]).tiers == ["dram"]
        assert c.get_chunks(SMALL, keys[2:]) == [payloads[2].tobytes()]
    assert d.stop() == 0

    d = daemon_factory(nvme_dir=nvme_dir, extra=("--quarantine-after", "2"))  # a restart keeps the quarantine
    with Client.connect(d.socket) as c:
        assert tier_row(c, "nvme")["quarantined"]
        assert c.lookup(keys[2:]).prefix == 0
        assert c.quarantine(clear=True, tier="nvme")["cleared"] == ["nvme"]
        assert c.get_chunks(SMALL, keys[2:]) == [payloads[2].tobytes()]


def test_a_put_over_a_quarantined_copy_promoted_after_a_clear_keeps_one_dram_copy(daemon_factory, tmp_path):
    """A put reserved while the copy was quarantined, committed after `clear` let a get promote
    it: the promoted copy stays, the put's slot is given back (none leaks)."""
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme_dir, extra=("--quarantine-after", "1"))
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        c.evict(tier="dram", everything=True)
        rewrite_nvme(nvme_dir, SMALL, keys[:1])
        assert verify(c, SMALL, keys, payloads)["quarantined"] == ["nvme"]
        batch = c.put(SMALL, keys[1:])
        assert batch.reserved == [0]  # stored, but only on a quarantined tier: a put may replace it
        np.copyto(batch.view(0), payloads[1])
        c.quarantine(clear=True)
        assert c.get_chunks(SMALL, keys[1:]) == [payloads[1].tobytes()]  # promoted from NVMe
        assert batch.commit() == 1
        assert tier_row(c, "dram")["used_bytes"] == SMALL.chunk_bytes and tier_row(c, "dram")["chunks"] == 1
        assert c.get_chunks(SMALL, keys[1:]) == [payloads[1].tobytes()]


def test_a_dram_copy_promoted_from_a_bad_nvme_file_is_blamed_on_nvme(daemon_factory, tmp_path):
    """A get promotes the wrong bytes before any sample sees them: the DRAM copy diverges too,
    but it carries NVMe's bytes, so NVMe is blamed (once), not DRAM."""
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme_dir, extra=("--quarantine-after", "0"))
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        c.evict(tier="dram", everything=True)
        rewrite_nvme(nvme_dir, SMALL, keys[:1])
        assert c.get_chunks(SMALL, keys)[0] != payloads[0].tobytes()  # served, and nothing noticed
        assert c.lookup(keys).tiers == ["dram", "dram"]
        result = verify(c, SMALL, keys, payloads)
        assert (result["diverged"], result["quarantined"]) == (1, [])  # --quarantine-after 0: never
        assert counts(c, "nvme", SMALL)["diverged"] == 1
        assert counts(c, "dram", SMALL).get("diverged", 0) == 0
        assert c.lookup(keys).codes[0] == 255  # both wrong copies removed
        assert c.lookup(keys[1:]).prefix == 1 and not tier_row(c, "nvme")["quarantined"]


def test_a_bad_copy_in_dram_is_blamed_on_dram_although_it_was_promoted(daemon_factory, tmp_path):
    """The NVMe copy a DRAM copy was read from still matches: the bytes changed in DRAM."""
    d = daemon_factory(extra=("--quarantine-after", "0"))
    keys = keys_of(SMALL, 1)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        c.evict(tier="dram", everything=True)
        c.get_chunks(SMALL, keys)  # promoted from NVMe
        overwrite_in_arena(c, SMALL, keys)
        assert verify(c, SMALL, keys, payloads)["diverged"] == 1
        assert counts(c, "dram", SMALL)["diverged"] == 1 and counts(c, "nvme", SMALL)["diverged"] == 0
        assert c.lookup(keys).tiers == ["nvme"]  # the DRAM copy went; the good NVMe copy stays


def test_an_object_tier_copy_is_read_through_the_tier_and_compared(daemon_factory, tmp_path):
    d = daemon_factory(nvme="0", extra=("--object-url", f"file://{tmp_path / 'bucket'}", "--quarantine-after", "0"))
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        wait_for("uploads", lambda: (t := tier_row(c, "object"))["upload_queued"] == 0
                 and t["upload_inflight"] == 0 and t["chunks"] == 2)
        c.evict(tier="dram", everything=True)
        assert c.lookup(keys).tiers == ["object", "object"]
        assert verify(c, SMALL, keys, [payloads[0], kv(SMALL, 99)])["diverged"] == 1  # the second is not its KV
        obj = counts(c, "object", SMALL)
        assert (obj["compared"], obj["exact"], obj["diverged"]) == (2, 1, 1)
        # deleted in the background; a lookup meanwhile may find the object once more, then not
        wait_for("the wrong object deleted", lambda: c.lookup(keys).tiers == ["object", None])


# ---------------------------------------------------------------------- bounds


def test_lossy_codec_copies_are_held_to_the_codecs_bound(daemon_factory, tmp_path):
    nvme_dir = tmp_path / "nvme"
    d = daemon_factory(nvme_dir=nvme_dir, extra=("--nvme-codec", "int8k-tq4v", "--quarantine-after", "0"))
    keys = keys_of(F32, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, F32, keys)
        c.evict(tier="dram", everything=True)
        assert tier_row(c, "nvme")["codec_encoded"] == 2
        rewrite_nvme(nvme_dir, F32, keys[1:], codec="int8k-tq4v")  # other KV, encoded the same way
        result = verify(c, F32, keys, payloads)
        assert result["diverged"] == 1
        nvme = counts(c, "nvme", F32)
        assert (nvme["compared"], nvme["exact"], nvme["within"], nvme["diverged"]) == (2, 0, 1, 1)
        assert c.lookup(keys).prefix == 1  # the honest lossy copy is still served


def test_tolerance_accepts_rounding_differences_and_nothing_more(daemon_factory):
    d = daemon_factory(nvme="0", extra=("--quarantine-after", "0"))
    keys = keys_of(F32, 1)
    with Client.connect(d.socket) as c:
        (payload,) = store(c, F32, keys)
        rounded = (payload.view(np.float32) * np.float32(1 + 1e-4)).view(np.uint8)  # another kernel's rounding
        assert verify(c, F32, keys, [rounded], tolerance=0.01)["diverged"] == 0
        assert counts(c, "dram", F32)["within"] == 1 and 0 < counts(c, "dram", F32)["max_error"] < 1e-3
        assert verify(c, F32, keys, [rounded])["diverged"] == 1  # byte-exact by default
        assert c.lookup(keys).prefix == 0


# ---------------------------------------------------------------------- bad input


def test_bad_verify_requests_are_refused_and_change_nothing(daemon_factory):
    d = daemon_factory(nvme="0")
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        before = c.stat()["canary"]
        with pytest.raises(UnknownLayoutError):
            c._call("reserve", layout_id="feedfeedfeedfeed", namespace="default", keys=keys, nbytes=1, verify=True)
        with pytest.raises(InvalidArgumentError, match="does not match layout"):
            c._call("reserve", layout_id=SMALL.layout_id, namespace="default", keys=keys, nbytes=7, verify=True)
        with pytest.raises(NotReservedError, match="not reserved for verification"):
            c._call("commit", keys=keys[:1], verify=True)
        batch = c.verify(SMALL, keys)
        for i in batch.reserved:
            np.copyto(batch.view(i), payloads[i])
        for tolerance in (-0.1, 1.0, math.nan, math.inf):
            with pytest.raises(InvalidArgumentError, match="tolerance"):
                c._call("commit", keys=keys, verify=True, tolerance=tolerance)
        with pytest.raises(InvalidArgumentError, match="tolerance"):
            c._call("commit", keys=keys, verify=True, tolerance="0.1")
        with pytest.raises(InvalidArgumentError, match="twice"):
            c._call("commit", keys=[keys[0], keys[0]], verify=True)
        with pytest.raises(InvalidArgumentError, match="verify commit"):
            c._call("commit", keys=keys, tolerance=0.1)
        assert c.stat()["canary"] == before  # nothing compared, the scratch slots still held
        assert batch.commit()["compared"] == 2  # ... and the right commit still works

        batch = c.verify(SMALL, keys)  # a scratch slot its writer never wrote
        np.copyto(batch.view(0), payloads[0])
        with pytest.raises(SlotNotWrittenError, match="scratch slot"):
            batch.commit()
        after = c.stat()["canary"]
        assert after["compared"] == 2 and after["not_written"] == 1
        assert c.lookup(keys).prefix == 2  # nothing was removed
        assert c.stat()["tiers"][0]["used_bytes"] == 2 * SMALL.chunk_bytes  # the scratch slots were freed

        with pytest.raises(InvalidArgumentError, match="tier 'tape'"):
            c.quarantine(clear=True, tier="tape")
        with pytest.raises(InvalidArgumentError, match="only to clear"):
            c._call("quarantine", tier="dram")
    bad = tierd("quarantine", "show", "nvme", "--socket", d.socket)
    assert bad.returncode == 1 and "is named only with clear" in bad.stderr
    bad = tierd("quarantine", "clear", "tape", "--socket", d.socket)
    assert bad.returncode == 1 and "tier 'tape': use one of ['dram']" in bad.stderr


def test_a_connection_that_closes_returns_its_scratch_slots(daemon_factory):
    d = daemon_factory(nvme="0")
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        store(c, SMALL, keys)
        with Client.connect(d.socket) as other:
            assert other.verify(SMALL, keys).reserved == [0, 1]
            assert c.stat()["tiers"][0]["used_bytes"] == 4 * SMALL.chunk_bytes
        wait_for("scratch slots returned", lambda: c.stat()["tiers"][0]["used_bytes"] == 2 * SMALL.chunk_bytes)


def test_a_bound_connection_verifies_only_its_own_chunks_and_cannot_clear(daemon_factory):
    d = daemon_factory(nvme="0", extra=("--quarantine-after", "1"))
    mine, theirs = keys_of(SMALL, 1, namespace="a"), keys_of(SMALL, 1, namespace="b")
    with Client.connect(d.socket) as owner:
        store(owner, SMALL, mine, "a")
        their_payloads = store(owner, SMALL, theirs, "b")
        with Client.connect(d.socket, namespace="a") as tenant:
            assert tenant.verify(SMALL, mine + theirs).reserved == [0]  # b's chunk: as if not stored
            with pytest.raises(PermissionDeniedError, match="cannot clear"):
                tenant.quarantine(clear=True)
        overwrite_in_arena(owner, SMALL, theirs)
        assert verify(owner, SMALL, theirs, their_payloads)["quarantined"] == ["dram"]
        with Client.connect(d.socket, namespace="a") as tenant:
            assert tenant.quarantine()["quarantine"]["tiers"]["dram"]["diverged"] == 1  # daemon-wide, like stat
            with pytest.raises(PermissionDeniedError):
                tenant.quarantine(clear=True)
        assert owner.quarantine(clear=True)["cleared"] == ["dram"]


@pytest.mark.parametrize("value", ["-1", "three", "2.5", ""])
def test_quarantine_after_must_be_a_whole_number(value):
    with pytest.raises(ConfigError, match="quarantine_after.*whole number of diverged chunks"):
        Config(socket="/tmp/x.sock", dram=1 << 26, nvme_dir="/tmp", nvme=0, quarantine_after=value)
    r = tierd("serve", "--socket", "/tmp/tierd-canary-bad.sock", "--quarantine-after", value)
    assert r.returncode != 0 and "--quarantine-after" in r.stderr


def test_quarantine_after_zero_never_quarantines_and_is_the_configured_default_three():
    assert Config(socket="/tmp/x.sock", dram=1 << 26, nvme_dir="/tmp", nvme=0).quarantine_after == 3
    assert Config(socket="/tmp/x.sock", dram=1 << 26, nvme_dir="/tmp", nvme=0, quarantine_after="0").quarantine_after == 0


def test_canary_metrics(daemon_factory):
    d = daemon_factory(nvme="0", extra=("--metrics-port", "0", "--quarantine-after", "1"))
    port = int(d.banner.rsplit(":", 1)[1].rstrip(")\n "))
    keys = keys_of(SMALL, 2)
    with Client.connect(d.socket) as c:
        payloads = store(c, SMALL, keys)
        overwrite_in_arena(c, SMALL, keys[:1])
        verify(c, SMALL, keys, payloads)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    labels = f'layout="{SMALL.layout_id}",tier="dram"'
    assert f"tierd_canary_compared_total{{{labels}}} 2.0" in text
    assert f"tierd_canary_diverged_total{{{labels}}} 1.0" in text
    assert f"tierd_canary_max_error{{{labels}}} 1.0" in text
    assert 'tierd_tier_quarantined{tier="dram"} 1.0' in text
