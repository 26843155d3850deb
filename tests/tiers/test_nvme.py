"""The NVMe chunk files: byte-exact round trips, corruption is a miss, crashes leave no torn chunks.

Everything runs on real files. `tmp_path` lives on the machine's real disk (ext4 here), so the
`direct` fixture exercises O_DIRECT for real; `buffered` forces the fallback path on the same
disk, and `tmpfs` runs on /dev/shm with the automatic probe.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import xxhash

from tierd.errors import CapacityError, ConfigError, InvalidArgumentError
from tierd.tiers.base import StoredRecord
from tierd.tiers.nvme.files import NvmeChunkFiles
from tierd.keys import MAX_NAMESPACE_BYTES
from tierd.tiers.nvme.format import BLOCK, HEADER_BYTES, StoredChunk

REPO = Path(__file__).resolve().parents[2]
LAYOUT = "0123456789abcdef"
MiB = 1 << 20


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def payload_of(key: bytes, n: int) -> bytes:
    """Deterministic bytes derived from the key, so a reader can verify without a side channel."""
    return hashlib.shake_128(key).digest(n)


class Arena:
    """Page-aligned slots in an anonymous mapping, like the daemon's shared-memory arena."""

    def __init__(self, slot_bytes: int, slots: int) -> None:
        self.slot_bytes = -(-slot_bytes // BLOCK) * BLOCK
        self._map = mmap.mmap(-1, self.slot_bytes * slots)
        self.view = memoryview(self._map)

    def slot(self, i: int) -> memoryview:
        return self.view[i * self.slot_bytes : (i + 1) * self.slot_bytes]


def unaligned(n: int) -> memoryview:
    """A writable buffer whose start is NOT 4096-aligned (exercises the bounce-buffer paths)."""
    return memoryview(bytearray(n + 1))[1:]


def make_store(mode: str, tmp_path: Path) -> NvmeChunkFiles:
    if mode == "direct":
        try:
            return NvmeChunkFiles(tmp_path / "nvme", direct_io=True)
        except ConfigError:
            pytest.skip(f"O_DIRECT unsupported on the filesystem of {tmp_path}")
    if mode == "buffered":
        return NvmeChunkFiles(tmp_path / "nvme", direct_io=False)
    raise AssertionError(mode)


@pytest.fixture(params=["direct", "buffered"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> NvmeChunkFiles:
    return make_store(request.param, tmp_path)


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="tierd-nvme-test-") as d:
        yield Path(d)


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# -- round trips ------------------------------------------------------------------------------

SIZES = [0, 1, 4095, 4096, 4097, MiB + 3]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_round_trip_is_byte_identical(store: NvmeChunkFiles, n: int, aligned: bool) -> None:
    key = key_of(n)
    data = payload_of(key, n)
    if aligned:
        arena = Arena(n + BLOCK, 2)
        src, dest = arena.slot(0), arena.slot(1)
    else:
        src, dest = unaligned(n + BLOCK), unaligned(n + BLOCK)
    src[:n] = data
    dest[:] = b"\xaa" * len(dest)  # sentinel: nothing past payload_len may be touched

    written = store.write(key, LAYOUT, "default", src[:n])

    assert written == store.file_bytes_for(n) == HEADER_BYTES + -(-n // BLOCK) * BLOCK
    assert store.path_for(key).stat().st_size == written
    assert store.read_into(key, dest, layout_id=LAYOUT, payload_len=n) is not None
    assert bytes(dest[:n]) == data
    assert bytes(dest[n:]) == b"\xaa" * (len(dest) - n)
    assert store.corrupt == 0


def test_round_trip_on_tmpfs_with_probe(tmpfs_dir: Path) -> None:
    store = NvmeChunkFiles(tmpfs_dir, direct_io=None)
    arena = Arena(MiB, 2)
    for n in (1, 4097, MiB - 5):
        key = key_of(1000 + n)
        arena.slot(0)[:n] = payload_of(key, n)
        store.write(key, LAYOUT, "ns", arena.slot(0)[:n])
        assert store.read_into(key, arena.slot(1), layout_id=LAYOUT, payload_len=n)
        assert bytes(arena.slot(1)[:n]) == payload_of(key, n)


@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_o_direct_is_used_exactly_when_enabled(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(mode, tmp_path)
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, *args: int, **kw: int) -> int:
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", spy)
    arena = Arena(3 * BLOCK, 2)
    arena.slot(0)[:] = os.urandom(3 * BLOCK)
    store.write(key_of(1), LAYOUT, "d", arena.slot(0)[: 2 * BLOCK + 7])
    assert store.read_into(key_of(1), arena.slot(1), layout_id=LAYOUT, payload_len=2 * BLOCK + 7)
    monkeypatch.undo()

    data_opens = [flags for path, flags in opened if path.endswith((".chunk", ".tmp"))]
    assert len(data_opens) == 2  # the temp file written, the chunk read
    want = mode == "direct"
    assert all(bool(flags & os.O_DIRECT) == want for flags in data_opens)
    assert bytes(arena.slot(1)[: 2 * BLOCK + 7]) == bytes(arena.slot(0)[: 2 * BLOCK + 7])


def test_overwrite_replaces_the_chunk(store: NvmeChunkFiles) -> None:
    key = key_of(7)
    store.write(key, LAYOUT, "a", b"first version")
    store.write(key, LAYOUT, "a", b"second")
    dest = bytearray(64)
    assert store.read_into(key, dest, layout_id=LAYOUT, payload_len=6)
    assert dest[:6] == b"second"
    assert [p.name for p in all_files(store.root)] == [store.path_for(key).name]


# -- scan -------------------------------------------------------------------------------------


def test_scan_finds_every_chunk_with_its_exact_size(store: NvmeChunkFiles) -> None:
    sizes = {key_of(i): n for i, n in enumerate([1, 100, 4095, 4096, 4097, 70000, 0, 12345])}
    for key, n in sizes.items():
        store.write(key, LAYOUT, f"ns-{n}", payload_of(key, n), created=1000.0 + n)

    reopened = NvmeChunkFiles(store.root, direct_io=store.direct_io)
    found = reopened.scan()

    assert {c.key for c in found} == set(sizes)
    assert reopened.dropped == 0 and reopened.temp_removed == 0
    assert [c.mtime for c in found] == sorted(c.mtime for c in found)
    for chunk in found:
        assert isinstance(chunk, StoredRecord) and isinstance(chunk, StoredChunk)
        n = sizes[chunk.key]
        assert chunk.file_bytes == chunk.stored_bytes == store.path_for(chunk.key).stat().st_size
        assert chunk.file_bytes == store.file_bytes_for(n)
        assert (chunk.payload_len, chunk.layout_id, chunk.namespace, chunk.created) == (n, LAYOUT, f"ns-{n}", 1000.0 + n)
        assert chunk.header.checksum == xxhash.xxh3_64_intdigest(payload_of(chunk.key, n))


def test_scan_drops_a_truncated_file(store: NvmeChunkFiles, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = key_of(1), key_of(2)
    store.write(good, LAYOUT, "d", payload_of(good, 9000))
    store.write(bad, LAYOUT, "d", payload_of(bad, 9000))
    os.truncate(store.path_for(bad), HEADER_BYTES + 4096)

    with caplog.at_level(logging.WARNING, logger="tierd.tiers.nvme"):
        found = store.scan()

    assert [c.key for c in found] == [good]
    assert store.dropped == 1
    assert not store.path_for(bad).exists()
    assert any(bad.hex() in r.getMessage() for r in caplog.records)


def test_read_of_a_truncated_file_is_a_miss(store: NvmeChunkFiles) -> None:
    key = key_of(3)
    store.write(key, LAYOUT, "d", payload_of(key, 3 * BLOCK))
    os.truncate(store.path_for(key), 2 * BLOCK)
    assert store.read_into(key, bytearray(3 * BLOCK), layout_id=LAYOUT, payload_len=3 * BLOCK) is None
    assert store.corrupt == 1 and not store.path_for(key).exists()


def test_scan_removes_leftover_temp_files(store: NvmeChunkFiles) -> None:
    key = key_of(4)
    store.write(key, LAYOUT, "d", payload_of(key, 5000))
    shard_tmp = store.path_for(key).parent / f".{key.hex()}.deadbeef.tmp"
    shard_tmp.write_bytes(os.urandom(10000))
    root_tmp = store.root / ".probe-1-0000cafe.tmp"  # names exactly as tierd writes them
    root_tmp.write_bytes(b"")

    found = store.scan()

    assert [c.key for c in found] == [key]
    assert store.temp_removed == 2 and store.dropped == 0
    assert not shard_tmp.exists() and not root_tmp.exists()


@pytest.mark.parametrize("offset", [0, 9, 20, 40, 66, 75, 85, 100, 345, 2000], ids=lambda o: f"byte{o}")
def test_header_with_a_flipped_byte_is_dropped(store: NvmeChunkFiles, offset: int) -> None:
    key = key_of(5)
    store.write(key, LAYOUT, "namespace", payload_of(key, 5000))
    path = store.path_for(key)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))

    if offset >= 352:  # beyond the hashed header fields: padding nobody reads
        assert [c.key for c in store.scan()] == [key]
        return
    assert store.scan() == []
    assert store.dropped == 1 and not path.exists()


def test_read_with_a_flipped_header_byte_is_a_miss(store: NvmeChunkFiles) -> None:
    key = key_of(6)
    store.write(key, LAYOUT, "d", payload_of(key, 100))
    with open(store.path_for(key), "r+b") as f:
        f.seek(72)  # the payload checksum field: only the header hash can notice
        f.write(b"\x00")
    assert store.read_into(key, bytearray(100), layout_id=LAYOUT, payload_len=100) is None
    assert store.corrupt == 1 and not store.path_for(key).exists()


def test_scan_drops_chunks_under_another_key_and_leaves_foreign_names(store: NvmeChunkFiles) -> None:
    a, b = key_of(8), key_of(9)
    store.write(a, LAYOUT, "d", b"x" * 10)
    # A valid file under another key's name: the header key must match the name.
    moved = store.path_for(b)
    os.rename(store.path_for(a), moved)
    foreign = store.root / "00" / "not-a-key.chunk"  # not a name tierd writes: not tierd's to delete
    foreign.write_bytes(b"junk")
    assert store.scan() == []
    assert store.dropped == 1 and not moved.exists()
    assert store.left_alone == 1 and foreign.read_bytes() == b"junk"


# -- corruption on read -----------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 4095, 4096, 70000 - 1], ids=lambda w: f"payload{w}")
def test_corrupt_payload_byte_is_a_miss_and_deletes_the_file(store: NvmeChunkFiles, where: int) -> None:
    key, n = key_of(10), 70000
    arena = Arena(n, 2)
    arena.slot(0)[:n] = payload_of(key, n)
    store.write(key, LAYOUT, "d", arena.slot(0)[:n])
    with open(store.path_for(key), "r+b") as f:
        f.seek(HEADER_BYTES + where)
        byte = f.read(1)[0]
        f.seek(HEADER_BYTES + where)
        f.write(bytes([byte ^ 0x01]))

    assert store.read_into(key, arena.slot(1), layout_id=LAYOUT, payload_len=n) is None
    assert store.corrupt == 1
    assert not store.path_for(key).exists()
    assert store.read_into(key, arena.slot(1), layout_id=LAYOUT, payload_len=n) is None  # now just absent
    assert store.corrupt == 1


def test_wrong_layout_id_is_a_miss(store: NvmeChunkFiles) -> None:
    key = key_of(11)
    store.write(key, LAYOUT, "d", payload_of(key, 5000))
    assert store.read_into(key, bytearray(5000), layout_id="fedcba9876543210", payload_len=5000) is None
    assert store.corrupt == 1 and not store.path_for(key).exists()


@pytest.mark.parametrize("asked", [4999, 5001, 4096, 8192])
def test_wrong_length_is_a_miss(store: NvmeChunkFiles, asked: int) -> None:
    key = key_of(12)
    store.write(key, LAYOUT, "d", payload_of(key, 5000))  # 4096 + 8192 bytes on disk; 4999, 5001, 8192 fit the same size
    assert store.read_into(key, bytearray(8192), layout_id=LAYOUT, payload_len=asked) is None
    assert store.corrupt == 1 and not store.path_for(key).exists()


def test_missing_chunk_is_a_plain_miss(store: NvmeChunkFiles) -> None:
    assert store.read_into(key_of(13), bytearray(10), layout_id=LAYOUT, payload_len=10) is None
    assert store.corrupt == 0


def test_delete_returns_the_bytes_freed(store: NvmeChunkFiles) -> None:
    key = key_of(14)
    size = store.write(key, LAYOUT, "d", b"y" * 5000)
    assert store.delete(key) == size == HEADER_BYTES + 8192
    assert store.delete(key) == 0
    assert not store.path_for(key).exists()


# -- bad arguments change nothing --------------------------------------------------------------


def test_bad_arguments_are_rejected_and_write_nothing(store: NvmeChunkFiles) -> None:
    key = key_of(15)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        store.write(key, LAYOUT, "n" * (MAX_NAMESPACE_BYTES + 1), b"data")
    with pytest.raises(InvalidArgumentError, match="namespace"):
        store.write(key, LAYOUT, "é" * (MAX_NAMESPACE_BYTES // 2 + 1), b"data")  # counted in UTF-8 bytes
    with pytest.raises(InvalidArgumentError, match="layout_id"):
        store.write(key, "not hex!", "d", b"data")
    with pytest.raises(InvalidArgumentError, match="layout_id"):
        store.write(key, "a" * 33, "d", b"data")
    with pytest.raises(InvalidArgumentError, match="key"):
        store.write(key[:15], LAYOUT, "d", b"data")
    with pytest.raises(InvalidArgumentError, match="destination"):
        store.read_into(key, memoryview(bytes(10)), layout_id=LAYOUT, payload_len=10)
    with pytest.raises(InvalidArgumentError, match="payload_len"):
        store.read_into(key, bytearray(10), layout_id=LAYOUT, payload_len=11)
    assert all_files(store.root) == []
    store.write(key, LAYOUT, "n" * MAX_NAMESPACE_BYTES, b"data")  # the bound itself is fine
    assert store.scan()[0].namespace == "n" * MAX_NAMESPACE_BYTES


@pytest.mark.parametrize("failing", ["fdatasync", "fsync"])
def test_a_failed_write_leaves_no_file(store: NvmeChunkFiles, failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full during the data sync, or an I/O error syncing the directory after the rename."""
    error = errno.ENOSPC if failing == "fdatasync" else errno.EIO

    def fail(fd: int) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(CapacityError if error == errno.ENOSPC else OSError, match=key_of(16).hex()):
        store.write(key_of(16), LAYOUT, "d", b"z" * 5000)
    monkeypatch.undo()
    assert all_files(store.root) == []


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_writes_and_reads_of_different_keys(store: NvmeChunkFiles) -> None:
    count, n = 48, 3 * BLOCK + 123
    keys = [key_of(100 + i) for i in range(count)]
    src, dest = Arena(n, count), Arena(n, count)
    for i, key in enumerate(keys):
        src.slot(i)[:n] = payload_of(key, n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda i: store.write(keys[i], LAYOUT, "c", src.slot(i)[:n]), range(count // 2))) == {
            store.file_bytes_for(n)
        }
        # Second half written while the first half is read back.
        writes = [pool.submit(store.write, keys[i], LAYOUT, "c", src.slot(i)[:n]) for i in range(count // 2, count)]
        reads = [pool.submit(store.read_into, keys[i], dest.slot(i), layout_id=LAYOUT, payload_len=n)
                 for i in range(count // 2)]
        assert all(f.result() for f in reads)
        for f in writes:
            f.result()
        reads = [pool.submit(store.read_into, keys[i], dest.slot(i), layout_id=LAYOUT, payload_len=n)
                 for i in range(count // 2, count)]
        assert all(f.result() for f in reads)

    for i, key in enumerate(keys):
        assert bytes(dest.slot(i)[:n]) == payload_of(key, n)
    assert store.corrupt == 0
    assert {c.key for c in store.scan()} == set(keys)


# -- crash safety -----------------------------------------------------------------------------
#
# kill -9 loses no page cache, so these prove the protocol (temp file, rename, cleanup on scan),
# not power-loss durability; that rests on fdatasync before rename and fsync of the directory.

WRITER = """
import hashlib, mmap, os, signal, sys
from tierd.tiers.nvme.files import NvmeChunkFiles
root, direct, crash_at, crash_point = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
store = NvmeChunkFiles(root, direct_io=direct)
slot = memoryview(mmap.mmap(-1, 1 << 20))
i = 0

def die_before(real):
    def wrapper(*args):
        if i == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    return wrapper

if crash_point == "before-rename":    # temp file complete and synced, never renamed
    os.rename = die_before(os.rename)
elif crash_point == "after-rename":   # renamed, directory not yet fsync'ed
    os.fsync = die_before(os.fsync)
while True:
    key = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()
    n = 1 + int.from_bytes(key[:3], "little") % (1 << 20)
    slot[:n] = hashlib.shake_128(key).digest(n)
    print("begin", i, flush=True)
    store.write(key, "abcd", "crash", slot[:n])
    print("acked", i, flush=True)  # durable from here on
    i += 1
"""
CRASH_AT = 24


@pytest.mark.parametrize("crash_point", ["timed", "before-rename", "after-rename"])
@pytest.mark.parametrize("mode", ["direct", "buffered"])
def test_kill_9_while_writing_loses_nothing_acknowledged_and_tears_nothing(
    mode: str, crash_point: str, tmp_path: Path
) -> None:
    """`timed`: SIGKILL from outside just after a write began (wherever it then is);
    the other two: the writer SIGKILLs itself at that exact step of write CRASH_AT."""
    root = tmp_path / "nvme"
    if mode == "direct":
        make_store("direct", tmp_path)  # skips where O_DIRECT is unsupported
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    crash_at = -1 if crash_point == "timed" else CRASH_AT
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), "1" if mode == "direct" else "0", str(crash_at), crash_point],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    acked = -1
    try:
        while True:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and crash_point != "timed":
                break  # it killed itself
            assert line, f"writer exited early: {proc.stderr.read()}"  # type: ignore[union-attr]
            what, i = line.split()
            if what == "acked":
                acked = int(i)
            elif acked >= CRASH_AT - 1 and crash_point == "timed":
                break  # a write has just begun: kill it wherever it is now
    finally:
        proc.kill()  # SIGKILL
        proc.communicate()
    assert proc.returncode == -9

    store = NvmeChunkFiles(root, direct_io=mode == "direct")
    found = store.scan()

    assert not [p for p in all_files(root) if p.name.endswith(".tmp")]
    assert store.dropped == 0
    keys = {c.key for c in found}
    acked_keys = {key_of(i) for i in range(acked + 1)}
    assert acked == CRASH_AT - 1
    if crash_point == "before-rename":
        assert keys == acked_keys and store.temp_removed == 1
    elif crash_point == "after-rename":
        assert keys == acked_keys | {key_of(CRASH_AT)} and store.temp_removed == 0
    else:  # the writer may have got further than the last line we read before the kill landed
        assert acked_keys <= keys <= {key_of(i) for i in range(acked + 1000)} and store.temp_removed <= 1
    dest = Arena(1 << 20, 1).slot(0)
    for chunk in found:
        assert store.read_into(chunk.key, dest, layout_id="abcd", payload_len=chunk.payload_len)
        assert bytes(dest[: chunk.payload_len]) == payload_of(chunk.key, chunk.payload_len)
    assert store.corrupt == 0
