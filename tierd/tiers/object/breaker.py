"""A circuit breaker for a remote tier: stop calling a store that keeps failing, probe it again later.

Closed: calls go through. After `failures` consecutive failures it opens: calls are refused at
once (lookups answer from local tiers without waiting on a dead store) until `cooldown`
seconds have passed; then one call at a time is let through as a probe (half-open). A success
closes it; a failure opens it again with the cooldown doubled, up to `max_cooldown`. So a store
that comes back is used again without a restart, and a store that stays down costs one probe
per cooldown.
"""
from __future__ import annotations

import enum
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, name: str, *, failures: int = 3, cooldown: float = 0.5, max_cooldown: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = failures
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.cooldown = cooldown
        self.retry_at = 0.0
        self.opened = 0  # times it opened, for stats
        self._probing = False

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() >= self.retry_at:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def would_allow(self) -> bool:
        """Whether `allow` could say yes now, without taking the half-open probe."""
        if self.state is BreakerState.OPEN:
            return self.clock() >= self.retry_at
        return self.state is BreakerState.CLOSED or not self._probing

    def seconds_until_retry(self) -> float:
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self.retry_at - self.clock())

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.warning("%s: store answers again; circuit closed", self.name)
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.cooldown = self.base_cooldown
        self._probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self._open()
        elif self.state is BreakerState.CLOSED and self.consecutive >= self.threshold:
            self._open()

    def _open(self) -> None:
        if self.state is BreakerState.CLOSED:
            log.warning("%s: %d failures in a row; circuit open, local tiers only, retry in %.1fs",
                        self.name, self.consecutive, self.cooldown)
        self.state = BreakerState.OPEN
        self.retry_at = self.clock() + self.cooldown
        self.opened += 1
        self._probing = False
