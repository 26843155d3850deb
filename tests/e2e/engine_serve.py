"""The engine side of a long-lived vLLM runner (``vllm_runner.py --serve``): one engine, many
prompt batches, so a test session starts one engine per configuration instead of one per test.

Requests arrive on stdin, one JSON object a line; each is answered with one JSON line on the
reply pipe (stdout and stderr are the engine's log, which the parent slices per request)::

    {"prompts": [[ids...], ...], "max_tokens": 8, "logprobs": 5, "sequential": false,
     "kill_pid": null, "kill_after": 0}
    -> {"results": [...], "generate_s": [...]}        (as run_vllm's output document)
    -> {"error": "traceback text"}                    (the engine stays up)

The first line on the reply pipe, once the engine is up, is the start-up document
(``vllm_version``, ``pid``, ``import_s``, ``engine_start_s``, ``warmup_s``). End of stdin
shuts the engine down.

Between batches nothing of one batch may reach the next, except through the daemon (which the
tests replace between tests): before each batch every tierd connection of this process is
closed, so the next request reconnects to whatever daemon now listens on the configured socket
(a stopped daemon's connection would otherwise fail the first lookup, and the link's back-off
would turn the next requests into misses); after each batch the engine is stepped until the
connector's saves have ended (a finished request keeps its blocks until then, and an engine that
is not stepped never learns they ended), and then vLLM's prefix cache is reset. Both need the
scheduler and worker in this process: the pool serves only single-process engines.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

#: How long the saves of one batch may take to end after its last request finished.
DRAIN_S = 120.0


def serve(llm: Any, info: dict[str, Any], reply_fd: int, *, generate: Callable[..., tuple[list, list]]) -> int:
    reply = os.fdopen(reply_fd, "w", buffering=1)
    _send(reply, {"ready": True, **info})
    links = _daemon_links()
    if "connectors.link" in sys.modules and not links:
        raise RuntimeError("a tierd connector is loaded but none of its links was found: cannot reconnect it")
    print(f"tierd test runner: serving, {len(links)} links to tierd", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            for link in links:
                link.close()  # the next call connects afresh (see the module docstring)
            results, generate_s = generate(llm, req["prompts"], max_tokens=req["max_tokens"],
                                           logprobs=req["logprobs"], sequential=req["sequential"],
                                           kill_pid=req.get("kill_pid"), kill_after=req.get("kill_after", 0))
            _drain(llm)
            if not llm.reset_prefix_cache():
                raise RuntimeError("vLLM refused to reset its prefix cache: blocks are still in use")
            _send(reply, {"results": results, "generate_s": generate_s})
        except Exception:  # the reply carries it; the engine stays up for the next batch
            _send(reply, {"error": traceback.format_exc()})
    return 0


def _send(reply: Any, doc: dict[str, Any]) -> None:
    reply.write(json.dumps(doc) + "\n")
    reply.flush()


def _daemon_links() -> list[Any]:
    """The connector's links to the daemon in this process (scheduler, worker, save queue).

    vLLM freezes the garbage collector after start-up (``gc.freeze``), which hides every object
    made until then from ``gc.get_objects``: thaw, look, freeze again."""
    gc.unfreeze()
    try:
        return [o for o in gc.get_objects()
                if type(o).__name__ == "DaemonLink" and type(o).__module__ == "connectors.link"]
    finally:
        gc.freeze()


def _scheduler(llm: Any) -> Any:
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    scheduler = getattr(core, "scheduler", None)
    if scheduler is None:
        raise RuntimeError("the engine core is not in this process: serve needs VLLM_ENABLE_V1_MULTIPROCESSING=0")
    return scheduler


def _drain(llm: Any) -> None:
    """Step the engine until no finished request still holds blocks for a running save."""
    scheduler = _scheduler(llm)
    deadline = time.monotonic() + DRAIN_S
    while scheduler.has_requests():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the connector's saves did not end within {DRAIN_S}s of the batch")
        llm.llm_engine.step()
        time.sleep(0.002)  # poll (with the deadline above): the saves run on the connector's thread
