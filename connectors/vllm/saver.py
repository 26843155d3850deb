"""The worker's save queue: gathers new chunks into tierd off the engine's critical path.

`wait_for_save` only hands each step's save specs to this queue and returns, so neither the
first token nor any decode step waits for a save. One background thread runs the saves in
order: reserve slots in the daemon, gather each chunk from vLLM's blocks straight into its
arena slot, commit. It has its own connection to the daemon (the loads keep theirs), so a
load never waits behind a save.

A save reads blocks vLLM could reuse once the request is gone, so the blocks must outlive it:
the scheduler holds a finished request's blocks until `finished()` says its saves are done
(reported through `get_finished`), and `wait_for()` blocks a preemption until the preempted
requests' saves are done, before the step that may overwrite their blocks runs. Every save
ends, stored or failed (a daemon that is down makes it a no-op), and its id is reported back
to the scheduler, which stops treating its chunks as on their way.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Callable

from connectors.link import DaemonLink
from connectors.vllm.metadata import SaveSpec
from tierd.client import Client
from tierd.errors import TierdError

log = logging.getLogger(__name__)

#: What one save does with a connected client (the worker's gather into arena slots).
SaveFn = Callable[[Client, SaveSpec], None]


class SaveQueue:
    def __init__(self, link: DaemonLink, save: SaveFn) -> None:
        self.link = link
        self._save = save
        self._jobs: queue.SimpleQueue[SaveSpec | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending: Counter[str] = Counter()  # request id -> saves not yet ended
        self._ended: list[int] = []  # save ids ended since the last take_ended()
        self.thread = threading.Thread(target=self._run, name="tierd-saver", daemon=True)
        self.thread.start()

    def submit(self, spec: SaveSpec) -> None:
        with self._cond:
            self._pending[spec.req_id] += 1
        self._jobs.put(spec)

    def finished(self, req_ids: set[str]) -> set[str]:
        """Those of `req_ids` with no save still running or queued."""
        with self._cond:
            return {r for r in req_ids if not self._pending[r]}

    def take_ended(self) -> list[int]:
        """Ids of the saves that ended (stored or failed) since the last call."""
        with self._cond:
            ended, self._ended = self._ended, []
            return ended

    def wait_for(self, req_ids: set[str] | list[str], timeout: float | None = None) -> bool:
        """Block until no save of `req_ids` is queued or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(self._pending[r] for r in req_ids), timeout)

    def drain(self, timeout: float) -> bool:
        """Block until every submitted save has ended; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued saves (a shutting-down engine's last chunks are worth keeping), then stop."""
        if not self.drain(timeout):
            log.warning("tierd: %d saves still queued at shutdown; dropping them", sum(self._pending.values()))
        self._jobs.put(None)
        self.thread.join(timeout=5.0)
        self.link.close()

    def _run(self) -> None:
        self.link.client()  # connect (and map the arena) now, not during the first request
        while (spec := self._jobs.get()) is not None:
            started = time.perf_counter()
            client = self.link.client()
            if client is not None:
                try:
                    self._save(client, spec)
                except (TierdError, OSError) as exc:
                    self.link.drop(exc)
                except Exception:  # a bug here must not kill the thread and hang the engine
                    log.exception("tierd: save of request %s failed", spec.req_id)
            log.debug("tierd: request %s saved %d chunks in %.2f ms", spec.req_id, len(spec.keys),
                      (time.perf_counter() - started) * 1e3)
            with self._cond:
                self._pending[spec.req_id] -= 1
                if not self._pending[spec.req_id]:
                    del self._pending[spec.req_id]
                self._ended.append(spec.save_id)
                self._cond.notify_all()
