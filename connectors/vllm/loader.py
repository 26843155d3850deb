"""Layer-wise loading: scatter a step's leased chunks into vLLM's blocks one layer at a time,
on a thread beside the forward pass, so that layer i+1 is copied while layer i computes.

`start_load_kv` leases the chunks and hands the copies to this thread; vLLM calls
`wait_for_layer_load` before each attention layer, which waits only until that layer is in
place. Only the first layer's copy is on the critical path, where the thread runs on a core the
forward pass does not use (`cores.py`). `wait_all` (from `wait_for_save`, after the forward)
makes sure every copy is done before the leases are released and the step ends.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Sequence

import numpy as np

from connectors.vllm.paged import PagedKV

log = logging.getLogger(__name__)

#: One copy: (canonical chunk in the arena, the blocks it fills, its first token within the chunk).
Piece = tuple[np.ndarray, Sequence[int], int]


class LayerLoader:
    def __init__(self, paged: PagedKV) -> None:
        self.paged = paged
        self.num_layers = paged.layout.num_layers
        self._jobs: queue.SimpleQueue[list[Piece] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._done = self.num_layers  # layers in place for the current job
        self._failed = False
        self.waited = 0.0  # seconds the forward pass spent waiting in this job
        self.finished_at = 0.0  # perf_counter when the last job's copies were done
        self.thread = threading.Thread(target=self._run, name="tierd-loader", daemon=True)
        self.thread.start()

    def start(self, pieces: list[Piece]) -> None:
        """Begin copying `pieces`, layer 0 of every piece first."""
        with self._cond:
            self._done, self._failed, self.waited = 0, False, 0.0
        self._jobs.put(pieces)

    def wait_layer(self, layer: int) -> None:
        """Block until `layer` is in place for every piece of the current job."""
        with self._cond:
            if self._done > layer:
                return
            started = time.perf_counter()
            self._cond.wait_for(lambda: self._done > layer)
            self.waited += time.perf_counter() - started

    def wait_all(self) -> bool:
        """Block until the current job is done; False if a copy failed (its KV is incomplete)."""
        self.wait_layer(self.num_layers - 1)
        return not self._failed

    def close(self) -> None:
        self._jobs.put(None)
        self.thread.join(timeout=5.0)

    def _run(self) -> None:
        while (pieces := self._jobs.get()) is not None:
            try:
                for layer in range(self.num_layers):
                    one = range(layer, layer + 1)
                    for src, blocks, first_token in pieces:
                        self.paged.scatter(src, blocks, first_token, layers=one)
                    with self._cond:
                        self._done = layer + 1
                        if self._done == self.num_layers:
                            self.finished_at = time.perf_counter()
                        self._cond.notify_all()
            except Exception:  # never leave the forward pass waiting
                log.exception("tierd: layer-wise load failed; its blocks will be recomputed")
                with self._cond:
                    self._failed, self._done, self.finished_at = True, self.num_layers, time.perf_counter()
                    self._cond.notify_all()
