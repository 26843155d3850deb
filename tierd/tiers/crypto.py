"""Encryption at rest for the lower tiers: AES-256-GCM with one key per namespace.

Why: an operator whose bucket is shared with other teams, or whose NVMe disks are not trusted
(a cloud volume that outlives the node, a drive sent back for repair), needs the KV bytes
there to be unreadable and unforgeable. With `--encrypt-key-file` the NVMe tier and the object
tier encrypt every copy they write and refuse to serve any copy that does not authenticate.
DRAM is never encrypted: clients map the arena.

How:

- The master key is 32 bytes from the key file (`load_key_file`): raw, or 64 hex characters
  with an optional newline. The file must be a regular file that group and others can neither
  read nor write (mode & 0o077 == 0); anything else stops the daemon at start.
- Each namespace has its own key, HKDF-SHA256(master, info = b"tierd namespace " + the
  namespace in UTF-8), so a copy written for one tenant never decrypts as another's.
- Each write draws a fresh random 96-bit nonce. Random nonces are safe for about 2**32
  encryptions under one key (NIST SP 800-38D), and that budget is per namespace.
- The associated data is the header fields that name the copy: key, namespace, layout id,
  raw and stored sizes, codec (`tierd.tiers.header.associated_data`). A copy moved under
  another key's name, relabelled to another namespace, layout, size or codec fails
  authentication, and the tier treats it as corrupt: a miss, deleted, never served.
- Encryption runs after the codec (compress, then encrypt: ciphertext does not compress).
  GCM keeps the length, and the 16-byte tag and the nonce live in the copy's header, so a
  copy takes exactly as many bytes as it would unencrypted and capacity accounting is
  unchanged.
- Each header also records a key id (8 bytes derived from the master key by HKDF; it says
  nothing about the key), so a daemon started without the key, or with another one, can say
  which key a copy needs instead of only "authentication failed".

A daemon with a key reads only copies encrypted with that key: a plaintext copy is refused too
(`unreadable_reason`), since anyone who can write to the bucket or the disk could otherwise
plant one. The work is CPU bound (AES-NI: several GB/s per core) and runs on the tiers' worker
threads, never on the event loop. `cryptography` is imported only when a cipher is made, so a
daemon without a key neither needs the package nor pays for its import at start.
"""
from __future__ import annotations

import mmap
import os
import stat
import string
import threading
from pathlib import Path
from typing import Any

from tierd.errors import ConfigError, TierdError

MASTER_KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
#: Namespace keys kept derived; beyond this many the cache starts afresh (a derivation is a few
#: microseconds, so this only bounds memory against a client inventing namespaces).
_MAX_CACHED_KEYS = 4096
_HEX = frozenset(string.hexdigits.encode())
_KEY_FILE_HINT = ("a key file holds 32 random bytes or 64 hex characters, e.g. "
                  "`head -c 32 /dev/urandom > FILE && chmod 600 FILE`")


class AuthenticationFailed(TierdError):
    """A copy did not authenticate under this daemon's key: tampered with, moved, or damaged.
    Never leaves a tier: the copy is a miss."""


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """The master key in `path`; ConfigError naming the file and the fix for anything else."""
    where = f"--encrypt-key-file={str(path)!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open it ({exc.strerror}); {_KEY_FILE_HINT}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file; {_KEY_FILE_HINT}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{where}: mode {mode:04o} lets group or others at the key; "
                              f"run `chmod 600 {path}` (or 400)")
        if st.st_size > 2 * MASTER_KEY_BYTES + 2:
            raise ConfigError(f"{where}: holds {st.st_size} bytes, not a key; {_KEY_FILE_HINT}")
        data = os.read(fd, 2 * MASTER_KEY_BYTES + 2)
    finally:
        os.close(fd)
    return parse_key(data, where)


def parse_key(data: bytes, where: str) -> bytes:
    """32 raw bytes, or 64 hex characters followed by at most one newline."""
    if len(data) == MASTER_KEY_BYTES:
        return data
    text = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if len(text) == 2 * MASTER_KEY_BYTES and set(text) <= _HEX:
        return bytes.fromhex(text.decode("ascii"))
    raise ConfigError(f"{where}: holds {len(data)} bytes, not a key; {_KEY_FILE_HINT}")


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


class ChunkCipher:
    """AES-256-GCM with a key per namespace, derived from one master key. Thread-safe.

    `seal_into` and `open_into` write into a buffer the caller owns (an aligned scratch
    buffer, an arena slot), so a chunk is never copied more than the cipher itself needs."""

    __slots__ = ("key_id", "_master", "_keys", "_lock", "_aes", "_gcm", "_cipher", "_invalid_tag")

    def __init__(self, master: bytes) -> None:
        if not isinstance(master, bytes) or len(master) != MASTER_KEY_BYTES:
            raise ConfigError(f"an encryption key is {MASTER_KEY_BYTES} bytes")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._cipher: Any = Cipher
        self._aes: Any = algorithms.AES
        self._gcm: Any = modes.GCM
        self._invalid_tag: type[Exception] = InvalidTag
        self._master = master
        self.key_id = _hkdf(master, b"tierd key id", KEY_ID_BYTES)
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "ChunkCipher":
        return cls(load_key_file(Path(path)))

    def __repr__(self) -> str:  # never the key itself
        return f"ChunkCipher(key_id={self.key_id.hex()})"

    def namespace_key(self, namespace: str) -> bytes:
        """HKDF-SHA256(master, info = b"tierd namespace " + namespace): 32 bytes."""
        with self._lock:
            key = self._keys.get(namespace)
        if key is None:
            key = _hkdf(self._master, b"tierd namespace " + namespace.encode("utf-8"), MASTER_KEY_BYTES)
            with self._lock:
                if len(self._keys) >= _MAX_CACHED_KEYS:
                    self._keys.clear()
                self._keys[namespace] = key
        return key

    def seal_into(self, namespace: str, aad: bytes, data: memoryview, out: memoryview) -> tuple[bytes, bytes]:
        """Encrypt `data` into `out[:len(data)]` under a fresh random nonce, authenticating
        `aad` too; returns (nonce, tag) for the copy's header."""
        nonce = os.urandom(NONCE_BYTES)
        enc = self._cipher(self._aes(self.namespace_key(namespace)), self._gcm(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        enc.update_into(data, out[: len(data)])
        enc.finalize()
        return nonce, enc.tag

    def open_into(self, namespace: str, aad: bytes, nonce: bytes, tag: bytes, data: memoryview,
                  out: memoryview) -> None:
        """Decrypt `data` into `out[:len(data)]`; AuthenticationFailed if the copy, its nonce,
        tag or any associated field is not what this key sealed (`out` then holds bytes that
        must not be used)."""
        if len(nonce) != NONCE_BYTES or len(tag) != TAG_BYTES:
            raise AuthenticationFailed(f"nonce of {len(nonce)} bytes / tag of {len(tag)} bytes")
        dec = self._cipher(self._aes(self.namespace_key(namespace)), self._gcm(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        dec.update_into(data, out[: len(data)])
        try:
            dec.finalize()
        except self._invalid_tag:
            raise AuthenticationFailed(
                f"does not authenticate under key {self.key_id.hex()} for namespace {namespace!r} "
                "(tampered with, renamed, or moved to another namespace)") from None


class ThreadBuffer(threading.local):
    """A page-aligned buffer per thread for the cipher to write into: ciphertext on its way to
    disk (aligned, so O_DIRECT writes it in place) or a decrypted blob on its way to a decoder.
    Valid until the same thread asks again."""

    def __init__(self) -> None:
        self._view: memoryview | None = None

    def get(self, nbytes: int) -> memoryview:
        if self._view is None or len(self._view) < nbytes:
            self._view = memoryview(mmap.mmap(-1, max(nbytes + mmap.PAGESIZE - 1, mmap.PAGESIZE)
                                              // mmap.PAGESIZE * mmap.PAGESIZE))
        return self._view[:nbytes]


def unreadable_reason(cipher: ChunkCipher | None, encrypted: bool, key_id: bytes) -> str | None:
    """Why this daemon cannot read a copy whose header says `encrypted` under `key_id`, or None
    if it can try (authentication still decides)."""
    if encrypted and cipher is None:
        return f"encrypted under key {key_id.hex()}, and this daemon has no --encrypt-key-file"
    if encrypted and cipher is not None and key_id != cipher.key_id:
        return f"encrypted under key {key_id.hex()}, this daemon's key is {cipher.key_id.hex()}"
    if not encrypted and cipher is not None:
        return "stored unencrypted, and this daemon serves only copies encrypted with its key"
    return None
