"""Does the cost model's recompute side predict real prefill times?

Builds a small Llama-style decoder in plain torch (RMSNorm, RoPE, grouped-query causal
attention through scaled_dot_product_attention, SwiGLU MLP, LM head on the last token only —
what the FLOPs formula in tierd/cost/shape.py counts), times its prefill at several prompt
lengths, fits `DeviceThroughput` (t = overhead + FLOPs / throughput) on two of them and predicts
the others. Each FIGURE line is one held-out length: value = predicted seconds, baseline =
measured seconds, ratio = measured / predicted (1.0 is a perfect prediction; the model is
useful within 0.7..1.3).

    python -m bench.costmodel_validation            # lengths 512..4096, 1 thread, CPU-time clock
    python -m bench.costmodel_validation --quick    # smaller model, same lengths
    python -m bench.costmodel_validation --threads 2 --clock wall   # what an engine would see
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tierd.cost.device import DeviceThroughput
from tierd.cost.shape import ModelShape


@dataclass(frozen=True, slots=True)
class BenchConfig:
    shape: ModelShape
    lengths: tuple[int, ...]
    fit_lengths: tuple[int, int]
    repeats: int
    clock: str = "cpu"


class TinyLlama(torch.nn.Module):
    """A Llama-style decoder whose prefill does exactly the matmuls `ModelShape` counts."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        d, h, k, e, i = (shape.hidden_size, shape.num_attention_heads, shape.num_kv_heads,
                         shape.head_dim, shape.intermediate_size)
        g = torch.Generator().manual_seed(0)

        def w(rows: int, cols: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(rows, cols, generator=g) / math.sqrt(cols), requires_grad=False)

        self.embed = w(shape.vocab_size, d)
        self.layers = torch.nn.ModuleList()
        for _ in range(shape.num_layers):
            layer = torch.nn.Module()
            layer.wq, layer.wk, layer.wv, layer.wo = w(h * e, d), w(k * e, d), w(k * e, d), w(d, h * e)
            layer.w_gate, layer.w_up, layer.w_down = w(i, d), w(i, d), w(d, i)
            self.layers.append(layer)
        self.lm_head = w(shape.vocab_size, d)

    @staticmethod
    def _rms(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.shape
        p = tokens.shape[0]
        h, k, e = s.num_attention_heads, s.num_kv_heads, s.head_dim
        inv = 1.0 / (10000 ** (torch.arange(0, e, 2, dtype=torch.float32) / e))
        ang = torch.outer(torch.arange(p, dtype=torch.float32), inv)
        cos, sin = ang.cos()[None], ang.sin()[None]
        x = self.embed[tokens]
        for layer in self.layers:
            y = self._rms(x)
            q = (y @ layer.wq.T).view(p, h, e).transpose(0, 1)
            kk = (y @ layer.wk.T).view(p, k, e).transpose(0, 1)
            v = (y @ layer.wv.T).view(p, k, e).transpose(0, 1)
            q, kk = self._rope(q, cos, sin), self._rope(kk, cos, sin)
            if k != h:
                kk = kk.repeat_interleave(h // k, dim=0)
                v = v.repeat_interleave(h // k, dim=0)
            a = F.scaled_dot_product_attention(q[None], kk[None], v[None], is_causal=True)[0]
            x = x + a.transpose(0, 1).reshape(p, h * e) @ layer.wo.T
            y = self._rms(x)
            x = x + (F.silu(y @ layer.w_gate.T) * (y @ layer.w_up.T)) @ layer.w_down.T
        return self._rms(x[-1]) @ self.lm_head.T


def measure(model: TinyLlama, lengths: tuple[int, ...], repeats: int, clock: str = "cpu") -> dict[int, float]:
    """Best-of-`repeats` seconds of one prefill per length.

    Rounds go over all lengths in turn, so a burst of load from other processes on this shared
    machine hits every length rather than skewing one; the minimum is kept because timing noise
    only ever adds. clock "cpu" is the process's CPU time (with one torch thread: the prefill's
    own compute time, unaffected by time slices lost to other processes); "wall" is what an
    engine sees on a quiet machine.
    """
    timer = time.process_time if clock == "cpu" else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    prompts = {p: torch.randint(0, model.shape.vocab_size, (p,), generator=gen) for p in lengths}
    model.prefill(prompts[lengths[0]])  # warm-up: allocator, kernels
    best = {p: math.inf for p in lengths}
    for _ in range(repeats):
        for p in lengths:
            t0 = timer()
            model.prefill(prompts[p])
            best[p] = min(best[p], timer() - t0)
    return best


def validate(cfg: BenchConfig) -> dict:
    """Measure every length, fit on `fit_lengths`, return predictions and ratios."""
    model = TinyLlama(cfg.shape)
    measured = measure(model, cfg.lengths, cfg.repeats, cfg.clock)
    device = DeviceThroughput.fit((cfg.shape.prefill_flops(p), measured[p]) for p in cfg.fit_lengths)
    rows = []
    for p in cfg.lengths:
        predicted = device.seconds(cfg.shape.prefill_flops(p))
        rows.append({"tokens": p, "measured_s": measured[p], "predicted_s": predicted,
                     "ratio": measured[p] / predicted, "fitted_on": p in cfg.fit_lengths})
    return {"flops_per_s": device.flops_per_s, "overhead_s": device.overhead_s, "rows": rows}


QUICK_SHAPE = ModelShape(num_layers=2, hidden_size=256, num_attention_heads=4, num_kv_heads=2, head_dim=64,
                         intermediate_size=704, vocab_size=4096)
FULL_SHAPE = ModelShape(num_layers=4, hidden_size=512, num_attention_heads=8, num_kv_heads=4, head_dim=64,
                        intermediate_size=1408, vocab_size=8192)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model (runs in seconds)")
    parser.add_argument("--lengths", default="512,1024,2048,3072,4096")
    parser.add_argument("--fit", default="1024,4096", help="the two lengths the throughput is fitted on")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time, robust on a shared machine (default); wall: elapsed time")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = tuple(int(x) for x in args.lengths.split(","))
    fit = tuple(int(x) for x in args.fit.split(","))
    if len(fit) != 2 or not set(fit) <= set(lengths):
        parser.error(f"--fit {args.fit!r}: give two of the --lengths")
    cfg = BenchConfig(QUICK_SHAPE if args.quick else FULL_SHAPE, lengths, (fit[0], fit[1]), args.repeats, args.clock)
    result = validate(cfg)
    print(f"shape {cfg.shape}")
    print(f"torch threads {torch.get_num_threads()}, clock {cfg.clock}, best of {cfg.repeats}")
    print(f"fitted on {cfg.fit_lengths}: {result['flops_per_s'] / 1e9:.2f} GFLOP/s, overhead {result['overhead_s'] * 1e3:.2f} ms")
    print(f"{'tokens':>7} {'GFLOP':>8} {'measured':>10} {'predicted':>10} {'meas/pred':>9}")
    for r in result["rows"]:
        print(f"{r['tokens']:>7} {cfg.shape.prefill_flops(r['tokens']) / 1e9:>8.2f} {r['measured_s'] * 1e3:>8.1f}ms "
              f"{r['predicted_s'] * 1e3:>8.1f}ms {r['ratio']:>9.3f}{'  (fit)' if r['fitted_on'] else ''}")
    for r in result["rows"]:
        if r["fitted_on"]:
            continue
        print("FIGURE " + json.dumps({
            "name": f"prefill_prediction_{'quick_' if args.quick else ''}{r['tokens']}tok_{cfg.clock}", "value": round(r["predicted_s"], 6), "unit": "s",
            "baseline": "measured_prefill", "baseline_value": round(r["measured_s"], 6),
            "ratio": round(r["ratio"], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
