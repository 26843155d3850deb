"""One vLLM engine with LoRA and prompt embeddings on, through the tierd connector, running a
list of requests in order; for ``test_request_identity.py``.

    python -m tests.e2e.identity_engine --model DIR --socket PATH --steps FILE --out FILE

The pooled runner (``vllm_runner.py``) sends bare token-id prompts; these requests also carry a
LoRA adapter, a ``cache_salt`` or prompt embeddings, so they get this small runner of their own.
It runs single-process (scheduler and worker in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
in the environment, see ``vllm_runner.engine_env``), which lets it read the connector's count of
requests it could not key at the end, and drain the connector's saves after each request.

``--steps`` holds a JSON list; each step is ``{"tokens": [...]}`` or ``{"embeds": [n, seed]}``
(n random embedding rows of the model's hidden size), optionally with ``"lora": [name, id, path]``
and ``"salt": "..."``. Decoding is greedy, 8 tokens, top-5 logprobs of the first. Output::

    {"start_s": ..., "results": [{"token_ids", "first_logprobs", "num_cached_tokens", "dram_chunks"}, ...],
     "unkeyable": {reason: count}}

``dram_chunks`` is the daemon's DRAM chunk count once the step's saves have ended.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _prompt(step: dict[str, Any], hidden: int) -> Any:
    if "embeds" in step:
        import torch

        n, seed = step["embeds"]
        g = torch.Generator().manual_seed(seed)
        return {"prompt_embeds": torch.randn(n, hidden, generator=g) * 0.05}
    from vllm.inputs import TokensPrompt

    if step.get("salt") is not None:
        return TokensPrompt(prompt_token_ids=step["tokens"], cache_salt=step["salt"])
    return TokensPrompt(prompt_token_ids=step["tokens"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--steps", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    steps = json.loads(Path(args.steps).read_text())

    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.lora.request import LoRARequest

    from tests.e2e.engine_serve import _drain
    from tests.e2e.vllm_runner import _shutdown
    from tierd.client import Client

    kv = KVTransferConfig(kv_connector="TierdConnector", kv_connector_module_path="connectors.vllm.connector",
                          kv_role="kv_both",
                          # save_decode: the old connector then also saved embeddings requests (under placeholder ids)
                          kv_connector_extra_config={"socket": args.socket, "load_plan": False, "save_decode": True,
                                                     "verify_sample": 0.0})  # no canary: hits are counted exactly
    t0 = time.perf_counter()
    llm = LLM(model=args.model, tokenizer=args.model, dtype="float32", seed=0, enable_prefix_caching=False,
              enforce_eager=True, gpu_memory_utilization=0.1, max_num_seqs=4, block_size=128, max_model_len=1024,
              enable_lora=True, max_loras=2, max_lora_rank=8, enable_prompt_embeds=True, kv_transfer_config=kv)
    start_s = time.perf_counter() - t0
    hidden = json.loads((Path(args.model) / "config.json").read_text())["hidden_size"]
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=5, ignore_eos=True, detokenize=False)
    results = []
    try:
        for step in steps:
            lora = LoRARequest(step["lora"][0], step["lora"][1], step["lora"][2]) if step.get("lora") else None
            out = llm.generate([_prompt(step, hidden)], params, lora_request=lora, use_tqdm=False)[0]
            _drain(llm)  # the step's saves have ended: the next step sees them, the count is final
            with Client.connect(args.socket, map_arena=False) as c:
                dram = next(t for t in c.stat()["tiers"] if t["name"] == "dram")
            comp = out.outputs[0]
            ranked = sorted(comp.logprobs[0].items(), key=lambda kv: (kv[1].rank, kv[0]))
            results.append({"token_ids": list(comp.token_ids), "num_cached_tokens": out.num_cached_tokens,
                            "first_logprobs": [[int(t), float(lp.logprob)] for t, lp in ranked],
                            "dram_chunks": dram["chunks"]})
        connector = llm.llm_engine.engine_core.engine_core.scheduler.connector
        doc = {"start_s": start_s, "results": results, "unkeyable": getattr(connector, "unkeyable_requests", None)}
        Path(args.out).write_text(json.dumps(doc))
    finally:
        _shutdown(llm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
