"""The whole test suite in two concurrent pytest sessions: the vLLM engine tests (tests/e2e) and
everything else.

Why: the suite is CPU-bound on about one core on average (engine start-ups, then daemons that
mostly wait on I/O), so on the 2-core CI machine two sessions side by side finish in little more
than the longer one. Each session is a plain `pytest -q` of its half, with its own fixtures (its
own SeaweedFS on free ports, its own engine pool); each writes its report to its own log, shown
when both are done. Exit status: 0 when both pass, else the first failing session's (pytest's 5,
"collected nothing", is a failure: a half that vanished is a broken suite).

    python -m tests.suite            # what `.ci/run` and the README run
    python -m pytest -q              # the same tests in one session (slower on 2 cores)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HALVES = {
    "e2e": ["tests/e2e"],
    "rest": ["--ignore=tests/e2e"],
}


def main(argv: list[str]) -> int:
    logs = Path(tempfile.mkdtemp(prefix="tierd-suite-"))
    started = time.monotonic()
    procs = {}
    for name, args in HALVES.items():
        out = open(logs / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "pytest", "-q", *args, *argv], cwd=ROOT,
                                        stdout=out, stderr=subprocess.STDOUT), out)
    codes = {}
    for name, (proc, out) in procs.items():
        codes[name] = proc.wait()
        out.close()
    for name in HALVES:
        print(f"===== {name} (pytest exit {codes[name]}) =====", flush=True)
        sys.stdout.write((logs / f"{name}.log").read_text())
    print(f"===== whole suite: {time.monotonic() - started:.0f} s; " +
          ", ".join(f"{n} exit {c}" for n, c in codes.items()) + " =====", flush=True)
    for name, code in codes.items():
        if code == 5:
            print(f"the {name} half collected no tests: the suite is missing or broken", file=sys.stderr)
            return 1
    return next((c for c in codes.values() if c != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
