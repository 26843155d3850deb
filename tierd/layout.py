"""Layout descriptor: what one stored chunk of KV is, byte for byte.

A layout pins down everything that makes two chunks interchangeable: the model, the dtype,
the attention shape and the tensor-parallel shard. Its identity seeds every chunk key, so KV
of one layout can never be served for another. The canonical in-store order of a chunk is

    [num_layers, kv_factor (K, V), chunk_tokens, num_kv_heads * head_dim]

independent of how any engine pages its cache; connectors gather into and scatter out of it.

`fingerprint` names the weights and settings the KV was computed with (`tierd.fingerprint`:
the checkpoint's content, its revision, weight quantisation, compute and KV cache dtypes), so
KV of a model whose weights changed behind the same name or path is never served for it. It is
optional: a layout without one has the identity (and so the layout id and chunk keys) it had
before fingerprints existed, and `to_dict` leaves it out, so such a layout still registers with
a daemon that predates the field.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from tierd.errors import InvalidArgumentError, names, shown

#: Bytes per element of the dtypes a KV cache can have. Named as torch names them.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
}

#: A model fingerprint: hex digits, as `tierd.fingerprint.model_fingerprint` makes them.
_FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True, slots=True)
class Layout:
    """The identity and shape of a chunk. Frozen: a layout never changes once registered."""

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    tp_rank: int = 0
    tp_size: int = 1
    chunk_tokens: int = 256
    kv_factor: int = 2
    fingerprint: str = ""  # the model's content fingerprint; "" = none (see the module docstring)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidArgumentError(f"layout.model {shown(self.model)}: give the model name as a non-empty string")
        if self.dtype not in DTYPE_SIZES:
            raise InvalidArgumentError(
                f"layout.dtype {shown(self.dtype)}: use one of {', '.join(sorted(DTYPE_SIZES))}"
            )
        for name in ("num_layers", "num_kv_heads", "head_dim", "tp_size", "chunk_tokens", "kv_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgumentError(f"layout.{name} {shown(value)}: must be a positive integer")
        if not isinstance(self.tp_rank, int) or isinstance(self.tp_rank, bool) or not 0 <= self.tp_rank < self.tp_size:
            raise InvalidArgumentError(
                f"layout.tp_rank {shown(self.tp_rank)}: must be an integer in [0, tp_size={self.tp_size})"
            )
        if self.kv_factor not in (1, 2):
            raise InvalidArgumentError(f"layout.kv_factor {shown(self.kv_factor)}: use 2 (K and V) or 1 (MLA latent)")
        if not isinstance(self.fingerprint, str) or (self.fingerprint and not _FINGERPRINT.fullmatch(self.fingerprint)):
            raise InvalidArgumentError(
                f"layout.fingerprint {shown(self.fingerprint)}: use 8 to 64 lowercase hex digits "
                "(tierd.fingerprint.model_fingerprint makes one), or leave it empty"
            )

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token occupies across all layers of this shard."""
        return self.num_layers * self.kv_factor * self.num_kv_heads * self.head_dim * self.itemsize

    @property
    def chunk_bytes(self) -> int:
        return self.bytes_per_token * self.chunk_tokens

    @property
    def chunk_shape(self) -> tuple[int, int, int, int]:
        """Canonical shape of one chunk: [layers, kv_factor, tokens, kv_heads * head_dim]."""
        return (self.num_layers, self.kv_factor, self.chunk_tokens, self.num_kv_heads * self.head_dim)

    def identity(self) -> bytes:
        """Canonical bytes of every field; the same on every machine and Python version. An empty
        fingerprint is left out, so layouts without one keep their ids and keys."""
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "fingerprint" or self.fingerprint]
        return ("tierd-layout-v1;" + ";".join(parts)).encode()

    @property
    def layout_id(self) -> str:
        """Short stable name of the layout (hex), used on the wire and on disk."""
        return hashlib.blake2b(self.identity(), digest_size=8).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.fingerprint:
            del data["fingerprint"]  # what a daemon from before fingerprints accepts
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Layout":
        """Build from a wire/config mapping; unknown or missing fields are a clear error."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"layout {shown(data)}: must be a mapping of layout fields")
        known = {f.name for f in fields(cls)}
        unknown = names(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"layout has unknown field(s) {unknown}: known fields are {sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InvalidArgumentError(f"layout {shown(dict(data))}: {exc}") from None
