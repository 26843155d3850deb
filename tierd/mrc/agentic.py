"""A generated agentic trace: tool-calling loops whose context grows and is re-read.

An agent session is a loop: the model reads its whole context (system prompt, tool
descriptions, the task, every earlier call and result) and emits a tool call; the tool's result
is appended, and the next turn reads everything again. So each turn's prompt is the previous
turn's prompt plus a few new blocks, and the whole history is re-read every turn. Many sessions
run at once, interleaved, which is what makes this hard for recency-based eviction: by the time
a session's next turn comes, the other open sessions' turns have pushed its history towards the
cold end of an LRU.

Structure of the ids (Mooncake format: one id per 512-token block, chained, so an id names its
whole prefix and two prompts share exactly the blocks whose ids agree):

- a system prompt of `system_blocks` blocks shared by every session (ids 0..system_blocks-1);
- one of `agent_types` tool sets, `tool_blocks` blocks each, after the shared prompt (shared by
  every session of that type);
- the session's task, then per turn 1..`max_append` new blocks (the previous call and its
  result): ids of the session's own, never seen in another session.

Sessions differ in length: the number of turns is geometric with mean `mean_turns` (most short,
a few long), capped at `max_turns` and by `max_context_blocks`. At most `concurrency` sessions
are open at once; the next turn belongs to a session picked at random among the open ones, and
a finished session is replaced by a new one until `sessions` have run. Arrival times are a
Poisson process (`mean_gap_ms` apart on average). Everything comes from one seeded
`random.Random`, so a spec and a seed always give the same trace.

`write_mooncake` writes the trace as Mooncake JSONL (`timestamp` in ms, `input_length`,
`output_length`, `hash_ids`, plus `session` and `turn`, which readers ignore), so
`tierd mrc --trace FILE` and `tierd.mrc.traces.read_mooncake` read it like the FAST'25 traces.

    python -m tierd.mrc.agentic OUT.jsonl [--seed N] [--sessions N] [--concurrency N]
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tierd.errors import InvalidArgumentError

#: Tokens per block (as in the Mooncake traces).
BLOCK_TOKENS = 512


@dataclass(slots=True, frozen=True)
class AgenticSpec:
    """The shape of a generated agentic trace (defaults: about 200k block references)."""

    sessions: int = 800
    concurrency: int = 64
    system_blocks: int = 8
    agent_types: int = 4
    tool_blocks: int = 4
    min_task_blocks: int = 1
    max_task_blocks: int = 4
    max_append: int = 3
    mean_turns: float = 10.0
    max_turns: int = 80
    max_context_blocks: int = 200
    output_tokens: int = 128
    mean_gap_ms: float = 20.0

    def check(self) -> None:
        """InvalidArgumentError naming the first field out of range."""
        positive = ("sessions", "concurrency", "agent_types", "min_task_blocks", "max_append", "max_turns",
                    "max_context_blocks")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"agentic trace {name}={getattr(self, name)!r}: use at least 1")
        for name in ("system_blocks", "tool_blocks", "output_tokens", "mean_gap_ms"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(f"agentic trace {name}={getattr(self, name)!r}: use 0 or more")
        if self.max_task_blocks < self.min_task_blocks:
            raise InvalidArgumentError(f"agentic trace max_task_blocks={self.max_task_blocks}: "
                                       f"use at least min_task_blocks={self.min_task_blocks}")
        if self.mean_turns < 1:
            raise InvalidArgumentError(f"agentic trace mean_turns={self.mean_turns!r}: use 1 or more")


@dataclass(slots=True, frozen=True)
class AgenticRequest:
    """One turn of one session: the whole context it reads, as chained block ids."""

    timestamp_ms: int
    session: int
    turn: int
    hash_ids: tuple[int, ...]


@dataclass(slots=True)
class _Session:
    number: int
    turns_left: int
    context: list[int]
    turn: int = 0


def agentic_requests(spec: AgenticSpec = AgenticSpec(), seed: int = 0) -> Iterator[AgenticRequest]:
    """The trace of `spec` for `seed`, in arrival order."""
    spec.check()
    rng = random.Random(seed)
    next_id = spec.system_blocks
    system = list(range(spec.system_blocks))
    tools = []
    for _ in range(spec.agent_types):
        tools.append(system + list(range(next_id, next_id + spec.tool_blocks)))
        next_id += spec.tool_blocks
    started = 0
    open_sessions: list[_Session] = []
    clock = 0.0

    def start() -> _Session:
        nonlocal next_id, started
        task = rng.randint(spec.min_task_blocks, spec.max_task_blocks)
        context = list(rng.choice(tools)) + list(range(next_id, next_id + task))
        next_id += task
        started += 1
        return _Session(started - 1, _turns(rng, spec), context)

    while open_sessions or started < spec.sessions:
        while len(open_sessions) < spec.concurrency and started < spec.sessions:
            open_sessions.append(start())
        index = rng.randrange(len(open_sessions))
        session = open_sessions[index]
        clock += rng.expovariate(1.0 / spec.mean_gap_ms) if spec.mean_gap_ms > 0 else 0.0
        yield AgenticRequest(int(clock), session.number, session.turn, tuple(session.context))
        session.turn += 1
        session.turns_left -= 1
        grow = rng.randint(1, spec.max_append)
        if session.turns_left <= 0 or len(session.context) + grow > spec.max_context_blocks:
            open_sessions[index] = open_sessions[-1]
            open_sessions.pop()
            continue
        session.context.extend(range(next_id, next_id + grow))
        next_id += grow


def _turns(rng: random.Random, spec: AgenticSpec) -> int:
    """Geometric number of turns (>= 1) with mean `spec.mean_turns`, capped at `spec.max_turns`."""
    p = 1.0 / spec.mean_turns
    turns = 1
    while turns < spec.max_turns and rng.random() >= p:
        turns += 1
    return turns


def write_mooncake(requests: Iterable[AgenticRequest], path: str | Path, *, output_tokens: int = 128) -> int:
    """Write `requests` as Mooncake JSONL to `path`; returns the number of lines written."""
    count = 0
    with Path(path).open("w") as f:
        for r in requests:
            f.write(json.dumps({"timestamp": r.timestamp_ms, "input_length": len(r.hash_ids) * BLOCK_TOKENS,
                                "output_length": output_tokens, "hash_ids": list(r.hash_ids),
                                "session": r.session, "turn": r.turn}, separators=(",", ":")) + "\n")
            count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierd.mrc.agentic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Mooncake JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    defaults = AgenticSpec()
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--mean-turns", type=float, default=defaults.mean_turns)
    args = parser.parse_args(argv)
    spec = AgenticSpec(sessions=args.sessions, concurrency=args.concurrency, mean_turns=args.mean_turns)
    try:
        write_mooncake(agentic_requests(spec, args.seed), args.out, output_tokens=spec.output_tokens)
    except InvalidArgumentError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
