"""Encryption at rest on the NVMe tier (tierd.tiers.crypto): key files, keys per namespace, and
chunk files that are unreadable on disk and cannot be served under another name.

Real files throughout (O_DIRECT and buffered, as tests/tiers/test_nvme.py). Before
`--encrypt-key-file` existed, every test here failed at the import of tierd.tiers.crypto; the
renaming tests also say what the same rename did to a plaintext chunk (it was served).
"""
from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from tierd.errors import ConfigError
from tierd.tiers.crypto import (
    KEY_ID_BYTES,
    MASTER_KEY_BYTES,
    AuthenticationFailed,
    ChunkCipher,
    load_key_file,
)
from tierd.tiers.header import associated_data
from tierd.tiers.nvme.files import NvmeChunkFiles
from tierd.tiers.nvme.format import BLOCK, HEADER_BYTES, decode_header, encode_header

LAYOUT = "0123456789abcdef"
MiB = 1 << 20
MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def payload_of(key: bytes, n: int) -> bytes:
    return hashlib.shake_128(key).digest(n)


def aligned(n: int) -> memoryview:
    return memoryview(mmap.mmap(-1, max(BLOCK, -(-n // BLOCK) * BLOCK)))[:n]


def read(files: NvmeChunkFiles, key: bytes, n: int) -> bytes | None:
    dest = aligned(n)
    header = files.read_into(key, dest, layout_id=LAYOUT, payload_len=n)
    return None if header is None else bytes(dest)


@pytest.fixture(params=["direct", "buffered"])
def io_mode(request: pytest.FixtureRequest) -> bool:
    return request.param == "direct"


# -- key files --------------------------------------------------------------------------------


def _key_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "tierd.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("data", [MASTER, MASTER.hex().encode(), MASTER.hex().encode() + b"\n",
                                  MASTER.hex().upper().encode() + b"\r\n"],
                         ids=["raw", "hex", "hex-newline", "HEX-crlf"])
def test_a_key_file_holds_32_raw_bytes_or_64_hex_characters(tmp_path: Path, data: bytes) -> None:
    assert load_key_file(_key_file(tmp_path, data)) == MASTER


@pytest.mark.parametrize("data,mode,message", [
    (MASTER, 0o644, "mode 0644 lets group or others at the key; run `chmod 600"),
    (MASTER, 0o640, "mode 0640 lets group or others"),
    (MASTER, 0o602, "mode 0602 lets group or others"),
    (MASTER[:31], 0o600, "holds 31 bytes, not a key"),
    (MASTER + b"\n", 0o600, "holds 33 bytes, not a key"),
    (MASTER.hex().encode()[:-1] + b"g", 0o600, "holds 64 bytes, not a key"),
    (MASTER.hex().encode() + b"\n\n", 0o600, "holds 66 bytes, not a key"),
    (b"", 0o600, "holds 0 bytes, not a key"),
    (os.urandom(4096), 0o600, "holds 4096 bytes, not a key"),
], ids=["0644", "0640", "0602", "short", "raw-newline", "not-hex", "two-newlines", "empty", "large"])
def test_a_bad_key_file_is_refused_with_what_to_do(tmp_path: Path, data: bytes, mode: int, message: str) -> None:
    path = _key_file(tmp_path, data, mode)
    with pytest.raises(ConfigError) as info:
        load_key_file(path)
    assert f"--encrypt-key-file={str(path)!r}: " in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_key_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open it .No such file or directory.; a key file holds 32"):
        load_key_file(tmp_path / "absent.key")
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key_file(tmp_path / "dir.key")


def test_a_symlink_to_a_private_key_file_is_read(tmp_path: Path) -> None:
    """Secrets mounted by an orchestrator are symlinks; the mode that counts is the file's."""
    target = _key_file(tmp_path, MASTER)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    assert load_key_file(link) == MASTER


# -- keys -------------------------------------------------------------------------------------


def test_each_namespace_gets_its_own_key_and_the_key_id_reveals_neither() -> None:
    cipher = ChunkCipher(MASTER)
    a, b = cipher.namespace_key("tenantA"), cipher.namespace_key("tenantB")
    assert len(a) == len(b) == MASTER_KEY_BYTES and a != b and MASTER not in (a, b)
    assert cipher.namespace_key("tenantA") == a  # deterministic: another daemon derives the same
    assert ChunkCipher(MASTER).namespace_key("tenantA") == a
    assert ChunkCipher(OTHER).namespace_key("tenantA") != a
    assert len(cipher.key_id) == KEY_ID_BYTES and cipher.key_id not in (MASTER[:8], a[:8], b[:8])
    assert ChunkCipher(MASTER).key_id == cipher.key_id != ChunkCipher(OTHER).key_id
    assert MASTER.hex() not in repr(cipher)


def test_the_associated_data_tells_every_naming_field_apart() -> None:
    base = dict(key=key_of(1), layout_id=LAYOUT, namespace="ns", payload_len=100, stored_len=100, codec="")
    variants = [base, {**base, "key": key_of(2)}, {**base, "layout_id": LAYOUT[:-1] + "0"},
                {**base, "namespace": "ns2"}, {**base, "payload_len": 101}, {**base, "stored_len": 99},
                {**base, "codec": "zstd:3"},
                # a length prefix keeps a shifted boundary from giving the same bytes
                {**base, "namespace": "n", "codec": "s"}, {**base, "namespace": "ns", "codec": ""}]
    assert len({associated_data(**v) for v in variants}) == len(variants) - 1  # the last repeats base


def test_a_sealed_chunk_opens_only_with_the_same_namespace_and_associated_data() -> None:
    cipher = ChunkCipher(MASTER)
    data = memoryview(payload_of(key_of(3), 10_000))
    sealed = memoryview(bytearray(len(data)))
    nonce, tag = cipher.seal_into("ns", b"aad", data, sealed)
    out = memoryview(bytearray(len(data)))
    cipher.open_into("ns", b"aad", nonce, tag, sealed, out)
    assert out == data
    for namespace, aad, n, t in (("other", b"aad", nonce, tag), ("ns", b"aad!", nonce, tag),
                                 ("ns", b"aad", bytes(12), tag), ("ns", b"aad", nonce, bytes(16))):
        with pytest.raises(AuthenticationFailed):
            cipher.open_into(namespace, aad, n, t, sealed, memoryview(bytearray(len(data))))
    with pytest.raises(AuthenticationFailed):
        ChunkCipher(OTHER).open_into("ns", b"aad", nonce, tag, sealed, memoryview(bytearray(len(data))))


# -- NVMe chunk files -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, MiB + 3])
def test_round_trip_of_an_encrypted_chunk_file(tmp_path: Path, io_mode: bool, n: int) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", direct_io=io_mode, cipher=ChunkCipher(MASTER))
    key = key_of(n)
    data = payload_of(key, n)
    # the same file size as unencrypted: nonce and tag live in the header block
    assert files.write(key, LAYOUT, "ns", memoryview(data)) == files.file_bytes_for(n)
    assert read(files, key, n) == data
    header = files.read_header(key)
    assert header is not None and header.encrypted and header.key_id == files.cipher.key_id
    assert files.corrupt == 0 and files.undecryptable == 0
    # unaligned source and destination (the bounce-buffer paths)
    files.write(key, LAYOUT, "ns", memoryview(bytearray(b"\0" + data))[1:])
    dest = memoryview(bytearray(n + 1))[1:]
    assert files.read_into(key, dest, layout_id=LAYOUT, payload_len=n) is not None and dest == data


def test_the_file_on_disk_does_not_hold_the_payload(tmp_path: Path) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", cipher=ChunkCipher(MASTER))
    key = key_of(4)
    data = payload_of(key, MiB)
    files.write(key, LAYOUT, "ns", memoryview(data))
    on_disk = files.path_for(key).read_bytes()
    body = on_disk[HEADER_BYTES:HEADER_BYTES + MiB]
    assert all(data[i:i + 32] not in on_disk for i in range(0, MiB, 64 * 1024))
    assert sum(a == b for a, b in zip(body[:65536], data[:65536])) < 65536 // 128  # ~1/256 by chance
    plain = NvmeChunkFiles(tmp_path / "plain")
    plain.write(key, LAYOUT, "ns", memoryview(data))
    assert data in plain.path_for(key).read_bytes()  # the check above can fail: plaintext is there


def test_two_namespaces_store_the_same_payload_as_different_bytes(tmp_path: Path) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", cipher=ChunkCipher(MASTER))
    data = payload_of(key_of(5), 64 * 1024)
    files.write(key_of(5), LAYOUT, "tenantA", memoryview(data))
    files.write(key_of(6), LAYOUT, "tenantB", memoryview(data))
    files.write(key_of(7), LAYOUT, "tenantA", memoryview(data))  # same namespace: a fresh nonce
    bodies = [files.path_for(key_of(i)).read_bytes()[HEADER_BYTES:HEADER_BYTES + len(data)] for i in (5, 6, 7)]
    assert len(set(bodies)) == 3
    assert all(read(files, key_of(i), len(data)) == data for i in (5, 6, 7))


@pytest.mark.parametrize("reader", ["no key", "another key"])
def test_a_daemon_without_the_key_or_with_another_reads_a_miss(tmp_path: Path, reader: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "nvme"
    writer = NvmeChunkFiles(root, cipher=ChunkCipher(MASTER))
    keys = [key_of(i) for i in range(10, 13)]
    for k in keys:
        writer.write(k, LAYOUT, "ns", memoryview(payload_of(k, 8192)))
    files = NvmeChunkFiles(root, cipher=None if reader == "no key" else ChunkCipher(OTHER))
    # scan keeps them (a wrong key file can still be fixed by a restart) and says so once
    assert sorted(r.key for r in files.scan()) == sorted(keys) and files.dropped == 0
    warning = [r.getMessage() for r in caplog.records if "chunk files in" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith(f"3 chunk files in {root} are encrypted under key "
                                                       f"{writer.cipher.key_id.hex()}")
    assert read(files, keys[0], 8192) is None
    assert files.corrupt == 1 and files.undecryptable == 1 and not files.path_for(keys[0]).exists()
    assert read(writer, keys[1], 8192) == payload_of(keys[1], 8192)  # the right key still reads the rest


def test_a_daemon_with_a_key_does_not_serve_a_plaintext_file(tmp_path: Path) -> None:
    """Anyone who can write to the disk could plant a plaintext chunk under any key."""
    root = tmp_path / "nvme"
    key = key_of(20)
    NvmeChunkFiles(root).write(key, LAYOUT, "ns", memoryview(payload_of(key, 8192)))
    files = NvmeChunkFiles(root, cipher=ChunkCipher(MASTER))
    assert read(files, key, 8192) is None and files.undecryptable == 1 and not files.path_for(key).exists()


def _relabel(files: NvmeChunkFiles, key: bytes, to_key: bytes | None = None, **fields: object) -> None:
    """What someone with write access to the disk can do: rewrite a header field (and the
    header hash, which is no secret) and move the file under another key's name."""
    path = files.path_for(key)
    raw = bytearray(path.read_bytes())
    header = decode_header(bytes(raw[:HEADER_BYTES]))
    header = dataclasses.replace(header, key=to_key or key, **fields)
    block = memoryview(bytearray(HEADER_BYTES))
    encode_header(header, block)
    raw[:HEADER_BYTES] = block
    target = files.path_for(to_key or key)
    target.write_bytes(bytes(raw))
    if target != path:
        path.unlink()


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
def test_a_file_moved_to_another_key_is_a_miss(tmp_path: Path, encrypted: bool) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", cipher=ChunkCipher(MASTER) if encrypted else None)
    key, other = key_of(30), key_of(31)
    data = payload_of(key, 8192)
    files.write(key, LAYOUT, "ns", memoryview(data))
    _relabel(files, key, to_key=other)
    got = read(files, other, 8192)
    if encrypted:
        assert got is None and files.undecryptable == 1 and not files.path_for(other).exists()
    else:
        assert got == data  # without encryption the moved chunk is served under the other key


@pytest.mark.parametrize("field,value", [("namespace", "tenantB"), ("codec", "zstd:3"),
                                         ("created", 1.0)])
def test_a_relabelled_header_is_a_miss_unless_the_field_names_nothing(tmp_path: Path, field: str,
                                                                      value: object) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", cipher=ChunkCipher(MASTER))
    key = key_of(40)
    data = payload_of(key, 8192)
    files.write(key, LAYOUT, "tenantA", memoryview(data))
    _relabel(files, key, **{field: value})
    got = read(files, key, 8192)
    if field == "created":  # when it was written names no chunk: still served
        assert got == data
    else:
        assert got is None and files.undecryptable == 1 and files.corrupt == 1


@pytest.mark.parametrize("where", ["nonce", "tag", "body"])
def test_a_flipped_nonce_tag_or_ciphertext_byte_is_a_miss(tmp_path: Path, where: str) -> None:
    files = NvmeChunkFiles(tmp_path / "nvme", cipher=ChunkCipher(MASTER))
    key = key_of(50)
    files.write(key, LAYOUT, "ns", memoryview(payload_of(key, 8192)))
    if where == "body":  # with the checksum rewritten too: only authentication can tell
        raw = bytearray(files.path_for(key).read_bytes())
        raw[HEADER_BYTES + 100] ^= 1
        files.path_for(key).write_bytes(bytes(raw))
        _relabel(files, key, checksum=xxhash.xxh3_64_intdigest(bytes(raw[HEADER_BYTES:HEADER_BYTES + 8192])))
    else:
        header = decode_header(files.path_for(key).read_bytes()[:HEADER_BYTES])
        value = bytearray(getattr(header, where))
        value[0] ^= 1
        _relabel(files, key, **{where: bytes(value)})
    assert read(files, key, 8192) is None and files.undecryptable == 1


def test_a_daemon_without_a_key_does_not_import_cryptography() -> None:
    """Start-up pays for the import (and needs the package) only when a key file is given."""
    code = ("import sys, tierd.daemon.assembly, tierd.tiers.nvme.files, tierd.tiers.object.tier; "
            "sys.exit('cryptography' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          timeout=60).returncode == 0
