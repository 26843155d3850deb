"""How many times the suite repeats each fault scenario.

The issue's counts (>= 100 kills, 10,000 frames) are `bench/faults.py`'s. The suite runs each
scenario with small counts, and smaller still where ``CI=true`` (the suite must stay under 12
minutes on the 2-core CI machine); ``TIERD_FAULT_COUNTS=full`` or ``ci`` picks one or the other
whatever ``CI`` says. Every count still reaches each code path its tests assert on (each kill
mode, each hostile-frame family); the benchmark's counts are what finds the rare ones.
"""
from __future__ import annotations

import os


def fault_count(local: int, ci: int) -> int:
    """`local` on a developer's machine, `ci` under ``CI=true``; see the module docstring."""
    choice = os.environ.get("TIERD_FAULT_COUNTS", "").strip().lower()
    if choice not in ("", "full", "ci"):
        raise ValueError(f"TIERD_FAULT_COUNTS={choice!r}: use 'full' or 'ci'")
    if not choice:
        choice = "ci" if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") else "full"
    return ci if choice == "ci" else local
