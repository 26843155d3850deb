"""What every lower tier's header says about a stored copy, and the checks before it is written.

An NVMe chunk file and an object in the bucket each start with a header that lets the copy
prove itself on read: key, layout, namespace, the raw size, a checksum of the stored bytes,
when it was written, how it was encoded, (object tier) which node wrote it and, for an
encrypted copy, the key id, nonce and tag (`tierd.tiers.crypto`). The byte layouts differ
(`tiers/nvme/format.py`, `tiers/object/format.py`); the fields, their limits, what encryption
authenticates (`associated_data`) and the tier-neutral view the store sees (`CopyHeader`) are
one thing, defined here.
"""
from __future__ import annotations

import string
import struct
from dataclasses import dataclass

from tierd.errors import InvalidArgumentError
from tierd.keys import check_namespace
from tierd.tiers.base import CopyHeader

KEY_BYTES = 16
MAX_LAYOUT_ID = 32
MAX_CODEC = 16
MAX_NODE = 64
#: Width of the namespace field in both formats; what is written is at most
#: `tierd.keys.MAX_NAMESPACE_BYTES` (255) of it, what is read may use the whole field (copies
#: written when the formats alone allowed 256 bytes).
NAMESPACE_FIELD = 256
_HEX = frozenset(string.hexdigits)


def check_key(key: bytes) -> bytes:
    if isinstance(key, bytearray):
        key = bytes(key)
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidArgumentError(f"chunk key {key!r}: must be {KEY_BYTES} bytes (a tierd.keys chunk key)")
    return key


def check_layout_id(layout_id: str) -> bytes:
    if not isinstance(layout_id, str) or not layout_id or len(layout_id) > MAX_LAYOUT_ID or not set(layout_id) <= _HEX:
        raise InvalidArgumentError(
            f"layout_id {layout_id!r}: must be a non-empty hex string of at most {MAX_LAYOUT_ID} characters")
    return layout_id.encode("ascii")


@dataclass(frozen=True, slots=True)
class MediumHeader:
    """The fields of a stored copy's header; each tier's format adds where its bytes go."""

    key: bytes
    layout_id: str
    namespace: str
    payload_len: int
    checksum: int
    created: float
    stored_len: int = -1  # -1: the raw chunk (== payload_len)
    codec: str = ""
    node: str = ""  # the writer's node id; only the shared object tier records it
    key_id: bytes = b""  # encryption (tierd.tiers.crypto): which master key; all three b"" when plaintext
    nonce: bytes = b""
    tag: bytes = b""

    @property
    def encrypted(self) -> bool:
        return bool(self.nonce)

    def associated_data(self) -> bytes:
        """What encryption authenticates besides the stored bytes (see `associated_data`)."""
        return associated_data(self.key, self.layout_id, self.namespace, self.payload_len, self.stored, self.codec)

    @property
    def stored(self) -> int:
        """Bytes stored after the header (before any padding)."""
        return self.payload_len if self.stored_len < 0 else self.stored_len

    @property
    def medium_bytes(self) -> int:
        """What the copy takes on its medium, header included; each format knows its own."""
        raise NotImplementedError

    def copy_header(self) -> CopyHeader:
        """The tier-neutral view of this header (`tierd.tiers.base.CopyHeader`)."""
        return CopyHeader(key=self.key, layout_id=self.layout_id, namespace=self.namespace,
                          payload_len=self.payload_len, stored=self.stored, medium_bytes=self.medium_bytes,
                          codec=self.codec, created=self.created, node=self.node, encrypted=self.encrypted)

    def encoded_fields(self) -> tuple[bytes, bytes, bytes, bytes]:
        """(layout, namespace, codec, node) as the bytes a format writes; InvalidArgumentError
        naming the field if one is out of its limits, before anything is written."""
        check_key(self.key)
        layout = check_layout_id(self.layout_id)
        namespace = check_namespace(self.namespace).encode("utf-8")
        codec = self.codec.encode("ascii") if self.codec.isascii() else b"\xff" * (MAX_CODEC + 1)
        if len(codec) > MAX_CODEC:
            raise InvalidArgumentError(f"codec {self.codec!r}: at most {MAX_CODEC} ASCII characters")
        node = self.node.encode("utf-8")
        if len(node) > MAX_NODE:
            raise InvalidArgumentError(f"node id {self.node!r}: at most {MAX_NODE} UTF-8 bytes")
        return layout, namespace, codec, node


_AAD_SIZES = struct.Struct("<QQ")


def associated_data(key: bytes, layout_id: str, namespace: str, payload_len: int, stored_len: int,
                    codec: str) -> bytes:
    """The header fields that name a copy, as the bytes AES-GCM authenticates with it: a copy
    whose header was changed to another key, namespace, layout, size or codec (to serve it
    under another name) no longer decrypts. Each text field is length-prefixed, so no two
    different headers give the same bytes. Not validated: a tampered header must fail
    authentication, not raise."""
    parts = [b"tierd chunk v1\0", bytes(key), _AAD_SIZES.pack(payload_len, stored_len)]
    for text in (layout_id.encode("utf-8", "surrogatepass"), namespace.encode("utf-8", "surrogatepass"),
                 codec.encode("utf-8", "surrogatepass")):
        parts += [len(text).to_bytes(2, "little"), text]
    return b"".join(parts)
