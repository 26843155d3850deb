"""Scheduler side of the connector: decides what each request loads from tierd and saves to it.

Per request it keeps the prompt's chunk keys, its block ids, and how far it has been saved.
`get_num_new_matched_tokens` asks the daemon once per request for the hit (one batched lookup,
optionally with the cost model's plan) and offers vLLM only what lies beyond the engine's own
prefix-cache hit, block aligned, never the last prompt token. `build_connector_meta` turns the
scheduled step into load specs (chunks to scatter into freshly allocated blocks before the
forward pass) and save specs (chunks whose tokens this step completes, gathered after it).

Saves run asynchronously on the worker, so the scheduler tracks which chunks are on their way
(each save has an id the worker reports back when it has ended). A request whose hit stops at a
chunk that is on its way waits for it (the hook answers "not yet", for at most
`WAIT_FOR_SAVES_S`) instead of recomputing what another request is storing right now; and a
finished request whose saves are still running keeps its blocks until the worker says they ended.

A daemon that is down is a miss, not an error: the request is simply recomputed.

Keys name more than tokens: each request's identity (`identity.py`: its LoRA adapter, its
multimodal items, its cache salt) goes into its chunk keys. A request whose KV cannot be keyed
(prompt embeddings, an unreadable adapter) is neither loaded nor saved, and counted
(`unkeyable`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connectors.link import DaemonLink
from connectors.vllm.canary import CanarySampler
from connectors.vllm.config import ConnectorConfig
from connectors.vllm.identity import RequestIdentities, RequestIdentity
from connectors.vllm.metadata import LoadSpec, SaveSpec, TierdConnectorMetadata
from tierd.errors import TierdError
from tierd.layout import Layout

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

#: Longest a request waits for chunks that are being saved before it recomputes them instead.
WAIT_FOR_SAVES_S = 1.0


@dataclass(slots=True)
class _RequestState:
    request: "Request"
    identity: RequestIdentity | None  # None: cannot be keyed, never loaded or saved
    keys: list[bytes]  # keys of the full chunks known so far
    block_ids: list[int] = field(default_factory=list)
    next_save: int = 0  # first chunk index not yet known to be in tierd
    load: tuple[int, int] | None = None  # (first token, end token) to load at the next step
    waiting_since: float | None = None  # when it first waited for chunks on their way (the limit runs from here)


class SchedulerSide:
    def __init__(self, cfg: ConnectorConfig, layout: Layout, block_size: int, plan_shape: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.block_size = block_size
        self.plan_shape = plan_shape
        self._reqs: dict[str, _RequestState] = {}
        self._next_save_id = 1
        self._saving: dict[int, tuple[str, list[bytes]]] = {}  # save id -> (request, keys), not yet ended
        self._saving_keys: Counter[bytes] = Counter()  # keys of self._saving, with multiplicity
        self._held: list[str] = []  # finished with saves running: tell the worker at the next step
        self.identities = RequestIdentities()
        self.link = DaemonLink(cfg.socket, layout, name="vllm-scheduler", namespace=cfg.namespace,
                               map_arena=False)
        self.canary = CanarySampler(cfg.verify_sample, layout.chunk_tokens, block_size)

    # ------------------------------------------------------------------ vLLM hooks

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        prompt = request.prompt_token_ids or []
        st = self._reqs.get(request.request_id)
        if st is None:
            identity = self.identities.of(request)
            keys = identity.chunk_keys(self.layout, prompt, self.cfg.namespace) if identity is not None else []
            st = _RequestState(request, identity, keys)
            self._reqs[request.request_id] = st
        st.load = None
        if not st.keys:
            return 0, False
        client = self.link.client()
        if client is None:
            return 0, False
        plan = None
        if self.cfg.load_plan and self.plan_shape is not None:
            plan = {"layout_id": self.layout.layout_id, "prompt_tokens": len(prompt), "shape": self.plan_shape,
                    "device": {"flops_per_s": self.cfg.device_flops} if self.cfg.device_flops else None}
        try:
            res = client.lookup(st.keys, plan=plan)
        except (TierdError, OSError) as exc:
            self.link.drop(exc)
            return 0, False
        st.next_save = max(st.next_save, res.prefix)
        load_chunks = res.prefix if res.plan is None else min(res.prefix, res.plan["load_chunks"])
        last_block = (len(prompt) - 1) // self.block_size * self.block_size  # leave >= 1 token to compute
        hit = min(load_chunks * self.layout.chunk_tokens, last_block)
        if self._worth_waiting(st, res.prefix, load_chunks, max(hit, num_computed_tokens), last_block):
            log.debug("tierd: request %s waits for chunk %d, being saved", request.request_id, res.prefix)
            return None, False  # vLLM asks again at its next step
        if hit <= num_computed_tokens:
            return 0, False
        if self.canary.take(request.request_id, num_computed_tokens, res.prefix):
            return 0, False  # sampled by the live canary: recomputed, then checked against tierd (canary.py)
        st.load = (num_computed_tokens, hit)
        return hit - num_computed_tokens, False

    @property
    def unkeyable(self) -> dict[str, int]:
        """Requests neither loaded nor saved because their KV cannot be keyed, by reason."""
        return dict(self.identities.refused)

    def _worth_waiting(self, st: _RequestState, prefix: int, load_chunks: int, have: int, last_block: int) -> bool:
        """Whether the hit stops at a chunk another save is storing right now, one that would
        extend what this request gets, and the request has not waited too long for it."""
        if prefix >= len(st.keys) or load_chunks < prefix or st.keys[prefix] not in self._saving_keys:
            return False
        if min((prefix + 1) * self.layout.chunk_tokens, last_block) <= have:
            return False
        now = time.monotonic()
        if st.waiting_since is None:
            st.waiting_since = now
        return now - st.waiting_since < WAIT_FOR_SAVES_S

    def update_state_after_alloc(self, request: "Request", num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is None or st.load is None:
            return
        if num_external_tokens == 0:
            st.load = None
            return
        start = st.load[0]
        st.load = (start, start + num_external_tokens)

    def build_connector_meta(self, out: "SchedulerOutput") -> TierdConnectorMetadata:
        meta = TierdConnectorMetadata()
        for new in out.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            self._add_load(meta, new.req_id, st)
            self._add_saves(meta, new.req_id, st, new.num_computed_tokens + out.num_scheduled_tokens[new.req_id])
        cached = out.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(new_blocks[0]) if new_blocks else []
            elif new_blocks:
                st.block_ids.extend(new_blocks[0])
            self._add_load(meta, req_id, st)
            self._add_saves(meta, req_id, st, cached.num_computed_tokens[i] + out.num_scheduled_tokens[req_id])
        meta.prefill = self._lone_prefill(out)
        meta.held, self._held = self._held, []
        meta.preempted = sorted(out.preempted_req_ids or ())
        return meta

    def _lone_prefill(self, out: "SchedulerOutput") -> tuple[int, int] | None:
        """(start, end) if the step is exactly one request prefilling prompt tokens."""
        if len(out.scheduled_new_reqs) != 1 or out.scheduled_cached_reqs.req_ids:
            return None
        new = out.scheduled_new_reqs[0]
        start = new.num_computed_tokens
        end = start + out.num_scheduled_tokens[new.req_id]
        return (start, end) if end <= len(new.prompt_token_ids or []) and end > start else None

    def request_finished(self, request: "Request") -> bool:
        """Forget the request; True if saves of it are still running (vLLM must keep its blocks
        until the worker reports them ended, which it does once told through `held`)."""
        self._reqs.pop(request.request_id, None)
        self.canary.forget(request.request_id)
        if any(req_id == request.request_id for req_id, _ in self._saving.values()):
            self._held.append(request.request_id)
            return True
        return False

    def saves_ended(self, save_ids: list[int]) -> None:
        """The worker's report: these saves are done (stored or dropped); their chunks are no
        longer on their way."""
        for sid in save_ids:
            _, keys = self._saving.pop(sid, ("", []))
            for key in keys:
                self._saving_keys[key] -= 1
                if self._saving_keys[key] <= 0:
                    del self._saving_keys[key]

    # ------------------------------------------------------------------ helpers

    def _add_load(self, meta: TierdConnectorMetadata, req_id: str, st: _RequestState) -> None:
        if st.load is None:
            return
        start, end = st.load
        st.load = None
        c = self.layout.chunk_tokens
        first, last = start // c, -(-end // c)
        meta.loads.append(LoadSpec(req_id, st.keys[first:last], first, start, end, list(st.block_ids)))

    def _add_saves(self, meta: TierdConnectorMetadata, req_id: str, st: _RequestState, computed: int) -> None:
        """Save the chunks whose every token has KV once this step has run."""
        check = self.canary.due(req_id, st.keys, st.block_ids, computed, self._next_save_id)
        if check is not None:  # the live canary: compared with what tierd holds, not stored
            self._next_save_id += 1
            meta.saves.append(check)
            self._saving[check.save_id] = (req_id, [])  # holds the blocks until it ends
        c = self.layout.chunk_tokens
        if st.identity is None:
            return
        if self.cfg.save_decode:
            tokens = st.request.all_token_ids
            limit = min(computed, len(tokens))
            if limit // c > len(st.keys):
                # Re-derived: a streaming session may have appended prompt segments (and images).
                st.identity = self.identities.current(st.request)
                if st.identity is None:
                    return
                st.keys = st.identity.chunk_keys(self.layout, tokens[: limit // c * c], self.cfg.namespace)
        else:
            limit = min(computed, len(st.request.prompt_token_ids or []))
        full = min(limit // c, len(st.keys))
        if full <= st.next_save:
            return
        blocks = full * c // self.block_size
        if len(st.block_ids) < blocks:  # not allocated yet (cannot happen for computed tokens)
            return
        keys = st.keys[st.next_save:full]
        sid, self._next_save_id = self._next_save_id, self._next_save_id + 1
        tokens = list(st.request.all_token_ids[st.next_save * c : full * c])  # (the prompt's come first)
        parent = st.keys[st.next_save - 1] if st.next_save else None
        meta.saves.append(SaveSpec(req_id, keys, st.next_save, list(st.block_ids[:blocks]), sid, tokens, parent))
        self._saving[sid] = (req_id, keys)
        self._saving_keys.update(keys)
        st.next_save = full
