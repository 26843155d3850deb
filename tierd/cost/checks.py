"""Argument checks shared by the cost modules: every figure they take must be a real, usable number.

A NaN bandwidth or a zero chunk size would not fail where it enters but as a nonsense plan far
away; each constructor and decision checks its inputs here and names the bad value.
"""
from __future__ import annotations

import math
from typing import Any

from tierd.errors import InvalidArgumentError, shown


def positive_int(owner: str, name: str, value: Any) -> int:
    """`value` as a positive int (bool refused), else InvalidArgumentError naming `owner.name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgumentError(f"{owner}.{name} {shown(value)}: must be a positive integer")
    return value


def finite(name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a finite float >= 0 (> 0 if `positive`), else InvalidArgumentError naming it."""
    need = "a positive finite number" if positive else "a finite number >= 0"
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise InvalidArgumentError(f"{name} {shown(value)}: must be {need}")
    return v
