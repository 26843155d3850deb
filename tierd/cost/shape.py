"""A decoder's shape: its prefill FLOPs (the recompute side of the cost model) and its KV size.

FLOPs (what `ModelShape.prefill_flops` counts; one multiply-add = 2 FLOPs)
-------------------------------------------------------------------------
With l layers, hidden d, h query heads, k KV heads, head dim e, MLP width i, vocab V, and m
MLP matrices (3 for SwiGLU: gate, up, down), computing tokens [s, p) of a prompt whose first s
tokens' KV is already present costs

    l · [ lin · (p − s)  +  att · (p(p+1) − s(s+1)) ]  +  2·d·V

    lin = 2·d·h·e (Q) + 2·2·d·k·e (K, V) + 2·h·e·d (O) + 2·m·d·i (MLP)   per token per layer
    att = 2·h·e                                                        per (query, key) pair

The attention term is exact for causal attention: query t scores t+1 keys (QKᵀ: 2·h·e FLOPs
per key) and mixes t+1 values (AV: the same), so tokens [s, p) cost 4·h·e·Σ(t+1) =
2·h·e·(p(p+1) − s(s+1)). Because the body is a difference of one function at p and at s,
FLOPs(s→p) = FLOPs(p) − FLOPs(s) holds exactly: attention of the recomputed tokens over the
loaded prefix is paid, attention among the loaded tokens is not. The LM head runs for the last
token only (prefill needs only the next-token logits). Norms, RoPE, softmax, residual adds and
the embedding gather are O(p·d) elementwise work and are not counted (well under 1 % of the
matmul FLOPs for real shapes); MoE routing is not modelled.

The issue's simplified form l·(a·p²·d + b·p·d²) is `ModelShape.simplified_flops`, with
a = att/d = 2·h·e/d (= 2 when h·e = d; the issue's a ≈ 4 counts the full non-causal p×p score
matrix) and b = lin/d² (≈ 24 for Llama-2-7B). `CostModel.recompute_seconds` uses the full count: it is just
as cheap (closed form), handles GQA, h·e ≠ d and a loaded prefix exactly, and has the +p terms
that matter for short prompts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from tierd.cost.checks import positive_int
from tierd.errors import ConfigError, InvalidArgumentError, names, shown
from tierd.layout import DTYPE_SIZES


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The dimensions of a decoder that set its prefill cost and its KV size.

    Frozen: a shape is a fact about a model. `mlp_matrices` is 3 for gated MLPs (SwiGLU, Llama,
    Qwen, Mistral) and 2 for a plain up/down MLP (GPT-2 style).
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    mlp_matrices: int = 3
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "mlp_matrices"):
            positive_int("model", f, getattr(self, f))
        if self.num_attention_heads % self.num_kv_heads:
            raise InvalidArgumentError(
                f"model.num_kv_heads {self.num_kv_heads}: must divide num_attention_heads "
                f"{self.num_attention_heads} (grouped-query attention shares each KV head by a whole group)"
            )
        if self.max_position_embeddings is not None:
            positive_int("model", "max_position_embeddings", self.max_position_embeddings)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        """Read a Hugging Face `config.json` (Llama-style keys).

        Uses num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size;
        num_key_value_heads defaults to num_attention_heads (no GQA) and head_dim to
        hidden_size / num_attention_heads, as transformers does. Multimodal configs that nest
        the language model under "text_config" are read from there. The MLP is taken as gated
        (3 matrices), which Llama-style configs (Llama, Mistral, Qwen, Gemma) all have.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"model config {type(config).__name__}: must be a JSON object (a config.json)")
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
            config = config["text_config"]

        def need(key: str) -> int:
            if key not in config or config[key] is None:
                raise ConfigError(
                    f"model config has no {key!r}: give a Llama-style config.json "
                    f"(num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size) "
                    f"or the shape flags"
                )
            return _config_int(key, config[key])

        layers = need("num_hidden_layers")
        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        inter = need("intermediate_size")
        vocab = need("vocab_size")
        kv = _config_int("num_key_value_heads", config["num_key_value_heads"]) if config.get("num_key_value_heads") is not None else heads
        if config.get("head_dim") is not None:
            head_dim = _config_int("head_dim", config["head_dim"])
        else:
            if hidden % heads:
                raise ConfigError(
                    f"model config hidden_size {hidden} is not a multiple of num_attention_heads {heads}: add 'head_dim'"
                )
            head_dim = hidden // heads
        max_pos = config.get("max_position_embeddings")
        try:
            return cls(
                num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv,
                head_dim=head_dim, intermediate_size=inter, vocab_size=vocab,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                max_position_embeddings=_config_int("max_position_embeddings", max_pos) if max_pos is not None else None,
            )
        except InvalidArgumentError as exc:
            raise ConfigError(f"model config: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelShape":
        known = {f.name for f in fields(cls)}
        unknown = names(set(data) - known) if isinstance(data, Mapping) else None
        if unknown is None or unknown:
            raise InvalidArgumentError(f"model shape {shown(data)}: unknown field(s) {unknown}; known fields are "
                                       f"{sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InvalidArgumentError(f"model shape {shown(dict(data))}: {exc}") from None

    # -- sizes ----------------------------------------------------------------------------

    @property
    def params(self) -> int:
        """Parameter count (embeddings, attention, MLP, RMSNorm weights, LM head unless tied)."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + self.mlp_matrices * d * self.intermediate_size + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.num_layers * per_layer + embed + head + d

    def kv_bytes_per_token(self, dtype: str = "bfloat16", kv_factor: int = 2) -> int:
        """KV bytes one token occupies over all layers (unsharded); the same as `Layout.bytes_per_token`."""
        if dtype not in DTYPE_SIZES:
            raise InvalidArgumentError(f"dtype {shown(dtype)}: use one of {', '.join(sorted(DTYPE_SIZES))}")
        return self.num_layers * kv_factor * self.num_kv_heads * self.head_dim * DTYPE_SIZES[dtype]

    # -- FLOPs ----------------------------------------------------------------------------

    @property
    def linear_flops_per_token(self) -> int:
        """`lin` of the module docstring: projection and MLP FLOPs of one token in one layer."""
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 2 * d * q + 4 * d * kv + 2 * q * d + 2 * self.mlp_matrices * d * self.intermediate_size

    @property
    def attention_flops_per_pair(self) -> int:
        """`att` of the module docstring: QKᵀ + AV FLOPs of one (query, key) pair in one layer."""
        return 2 * self.num_attention_heads * self.head_dim

    def body_flops(self, end: int, start: int = 0, attention_weight: float = 1.0) -> float:
        """FLOPs of all layers for tokens [start, end) with KV of [0, start) present; no LM head.
        Attention FLOPs count `attention_weight` times (see `DeviceThroughput.attention_weight`)."""
        if end <= start:
            return 0.0
        return float(self.num_layers * (self.linear_flops_per_token * (end - start)
                                        + attention_weight * self.attention_flops_per_pair
                                        * (end * (end + 1) - start * (start + 1))))

    def prefill_flops(self, tokens: int, start: int = 0, *, lm_head: bool = True,
                      attention_weight: float = 1.0) -> float:
        """FLOPs to prefill tokens [start, tokens) given the KV of [0, start); see the module docstring."""
        linear, attention = self.flops_parts(tokens, start, lm_head=lm_head)
        return linear + attention_weight * attention

    def flops_parts(self, tokens: int, start: int = 0, *, lm_head: bool = True) -> tuple[float, float]:
        """(projection + MLP + LM head FLOPs, attention FLOPs) of prefilling tokens [start, tokens):
        the two kinds of work a device may run at different speeds."""
        if start < 0 or tokens < 0:
            raise InvalidArgumentError(f"prefill range [{start}, {tokens}): token counts must be >= 0")
        if tokens <= start:
            return 0.0, 0.0
        l = self.num_layers
        linear = float(l * self.linear_flops_per_token * (tokens - start))
        attention = float(l * self.attention_flops_per_pair * (tokens * (tokens + 1) - start * (start + 1)))
        return linear + (2.0 * self.hidden_size * self.vocab_size if lm_head else 0.0), attention

    def simplified_coefficients(self) -> tuple[float, float]:
        """(a, b) of the issue's form l·(a·p²·d + b·p·d²), derived from this shape (causal a)."""
        d = self.hidden_size
        return self.attention_flops_per_pair / d, self.linear_flops_per_token / (d * d)

    def simplified_flops(self, tokens: int, a: float | None = None, b: float | None = None) -> float:
        """The issue's l·(a·p²·d + b·p·d²); a, b default to `simplified_coefficients()`.

        For display and comparison only: it drops the +p attention term and the LM head.
        """
        da, db = self.simplified_coefficients()
        a = da if a is None else a
        b = db if b is None else b
        d, p = self.hidden_size, tokens
        return self.num_layers * (a * p * p * d + b * p * d * d)


def _config_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise ConfigError(f"model config {key!r} = {shown(value)}: must be a positive integer")
    return int(value)
