"""Client processes that the fault scenarios kill with SIGKILL.

    python -m tests.faults.child writer                      # stdin: "go SOCKET SEED" lines, "quit"
    python -m tests.faults.child put-hold SOCKET SEED        # reserve, write some slots, block
    python -m tests.faults.child get-hold SOCKET SEED KNOWN  # lease a known prompt, read some, block
    python -m tests.faults.child loop SOCKET SEED KNOWN      # puts and gets without end

Each one reports on stdout, one line per event, flushed, so the orchestrator can wait on a line
("held", "ready", "lost ...") instead of sleeping, and learn what the child did before it died.
KNOWN is "SEED:COUNT": the prompts (SEED, 0..COUNT-1) the orchestrator stored beforehand.
A holding child blocks on stdin: it never leaves its reservation or lease on its own, so the
SIGKILL that follows lands inside the reserve/commit or acquire/release window for certain.
"""
from __future__ import annotations

import random
import sys

import numpy as np

from tests.faults.workload import CHUNK, FAULTS, payload, prompt_keys, put_prompt
from tierd.client import Client


def _say(*words: object) -> None:
    print(*words, flush=True)


def _known(spec: str) -> list[list[bytes]]:
    seed, count = (int(x) for x in spec.split(":"))
    return [prompt_keys(seed, i) for i in range(count)]


def writer() -> int:
    """Sustained writes for the daemon-kill scenario: prompts of one seed, one after another,
    until the daemon dies under it ("lost"); then wait for the next daemon ("go")."""
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            return 0
        _, socket_path, seed = words
        done = 0
        try:
            with Client.connect(socket_path, name="fault-writer") as client:
                while True:
                    put_prompt(client, prompt_keys(int(seed), done))
                    _say("committed", done)
                    done += 1
        except Exception as exc:  # the daemon was killed: any error of a dead connection
            _say("lost", done, type(exc).__name__)
    return 0


def put_hold(socket_path: str, seed: int) -> int:
    """Reserve a prompt's slots, fill a random number of them (one only partly), then hold."""
    rng = random.Random(seed)
    client = Client.connect(socket_path, name=f"put-hold-{seed}")
    keys = prompt_keys(seed, 0)
    batch = client.put(FAULTS, keys)
    reserved = batch.reserved
    full = rng.randint(0, len(reserved))
    for n, i in enumerate(reserved):
        if n < full:
            np.copyto(batch.view(i), payload(keys[i]))
        elif n == full:
            part = rng.randrange(CHUNK)
            np.copyto(batch.view(i)[:part], payload(keys[i])[:part])
    _say("held", len(reserved), full)
    sys.stdin.read()  # until SIGKILL (or the orchestrator goes away)
    return 0


def get_hold(socket_path: str, seed: int, known: str) -> int:
    """Lease one known prompt, read a random number of its chunks, then hold the lease."""
    rng = random.Random(seed)
    prompts = _known(known)
    client = Client.connect(socket_path, name=f"get-hold-{seed}")
    keys = rng.choice(prompts)
    lease = client.get(FAULTS, keys)
    corrupt = sum(lease.view(i).tobytes() != payload(keys[i]).tobytes()
                  for i in range(rng.randint(0, lease.count)))
    _say("held", lease.count, corrupt)
    sys.stdin.read()
    return 0


def loop(socket_path: str, seed: int, known: str) -> int:
    """Random puts (fresh prompts) and gets (known prompts, verified) until killed."""
    rng = random.Random(seed)
    prompts = _known(known)
    client = Client.connect(socket_path, name=f"loop-{seed}")
    _say("ready")
    for n in range(1_000_000):
        if rng.random() < 0.5:
            put_prompt(client, prompt_keys(seed, n))
        else:
            keys = rng.choice(prompts)
            with client.get(FAULTS, keys) as lease:
                for i in range(lease.count):
                    if lease.view(i).tobytes() != payload(keys[i]).tobytes():
                        _say("corrupt", keys[i].hex())
    return 0


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "writer":
        return writer()
    if mode == "put-hold":
        return put_hold(args[0], int(args[1]))
    if mode == "get-hold":
        return get_hold(args[0], int(args[1]), args[2])
    if mode == "loop":
        return loop(args[0], int(args[1]), args[2])
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
