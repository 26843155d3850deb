"""The request streams of `bench.workload`, as token-id prompts, and the capacity arithmetic that
says whether the engine's KV space, tierd's DRAM and its NVMe can hold them.

Three workloads, each a pure function of its spec (and the model's vocabulary size): the same
spec gives the same token ids in every process and on every machine (seeded `random.Random`
from blake2b digests, never Python's `hash()`).

- **Multi-round chat** (`ChatSpec`): users who share one system prompt each hold a
  conversation. Turn k+1's prompt is turn k's prompt, then the assistant's answer to it, then
  the user's next message, so every turn extends its own growing history. The answer is a
  synthetic, deterministic token string (a recorded conversation replayed), not what the
  engine generates: every configuration sees the same prompts. A few sessions (visits) are open
  at a time; the next speaker is, at random, one of the two open sessions that have waited
  longest, never the one that just spoke while another is open (a user reads the answer before
  writing again), so within a visit a history comes back after the other open sessions' turns.
  A user comes back for a second visit only after every user's first visit has begun, so the
  history a returning user needs is among the oldest in any cache.
- **Long-document QA** (`DocQASpec`): a few long documents, many short questions each, in a
  seeded random interleaving (never the same document twice in a row while another one has
  questions left). The prompt is the document, then the question: every question on a
  document shares the document's tokens.
- **Mooncake conversation trace, scaled** (`MooncakeSpec`): the trace's hash ids are 512-token
  prefix blocks, chained (an id stands for its whole prefix). Each id becomes a deterministic
  512-token block, so requests whose first k ids agree share exactly k*512 leading tokens and
  not one more: a block's first token is the rank of its id among the ids that follow the
  same parent in the replay, so two different blocks after the same prefix differ at once
  (the rest of the block is pseudo-random from the id). To run on a small CPU the replay is
  scaled down in two ways. Whole conversations (requests sharing their second block; the first
  block, id 0, is every request's system prompt) are sampled by a hash of their key until
  there are `requests` requests, which keeps every sampled conversation's reuse intact (the
  replay is the first `requests` of their requests in trace order, so it stops part-way
  through the latest conversations). And each request keeps the leading
  ceil(len * length_scale) of its ids (at most `max_blocks`), which keeps which requests
  extend which. Each request ends in a short tail of its own (the new message), so no two
  prompts are equal. Arrival times are ignored: requests are replayed one at a time, in trace
  order. Sampling conversations shortens the distance between a conversation's requests as
  much as it shortens the trace, so reuse comes back sooner (in requests and tokens) than in
  the full hour of traffic, and a small cache catches more of it.

Capacity (`working_set_tokens`, `CapacityPlan`): the working set is every distinct full
chunk of prompt tokens the workload ever asks for (what a store of unbounded size would hold).
`CapacityPlan` compares it with the engine's KV blocks and with tierd's DRAM and NVMe, all in
tokens of KV of one model.
"""
from __future__ import annotations

import hashlib
import math
import random
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

#: Token ids below this are the test models' special tokens (<unk>, <s>, </s>, <pad>).
FIRST_ID = 4
#: Tokens per hash id in the Mooncake traces.
MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"
MOONCAKE_CONVERSATION = MOONCAKE_DIR / "conversation_trace.jsonl"


@dataclass(frozen=True, slots=True)
class Request:
    """One prompt of a workload. `tag` says where it comes from (user/turn, document/question,
    trace line), for logs and tests."""

    workload: str
    tag: str
    tokens: tuple[int, ...]


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def token_block(key: str, n: int, vocab: int) -> list[int]:
    """`n` pseudo-random token ids in [FIRST_ID, vocab), a pure function of `key`."""
    if vocab <= FIRST_ID + 1:
        raise ValueError(f"vocab {vocab}: need more than {FIRST_ID + 1} token ids")
    rng = random.Random(_seed(key))
    return [rng.randrange(FIRST_ID, vocab) for _ in range(n)]


def _length(rng: random.Random, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    return rng.randint(lo, hi)


# --------------------------------------------------------------------------- multi-round chat


@dataclass(frozen=True, slots=True)
class ChatSpec:
    """Multi-round chat. Every user has `visits` visits of `turns_per_visit` turns; `active`
    sessions (visits) are interleaved at a time. Lengths are in tokens; (lo, hi) pairs are
    drawn uniformly per message."""

    users: int = 6
    visits: int = 2
    turns_per_visit: int = 4
    active: int = 4
    system_tokens: int = 512
    first_message_tokens: int = 2304  # the opening message (a pasted document or code)
    message_tokens: tuple[int, int] = (48, 128)
    answer_tokens: tuple[int, int] = (96, 192)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.users, self.visits, self.turns_per_visit, self.active) < 1:
            raise ValueError(f"{self}: users, visits, turns_per_visit and active must be >= 1")

    @property
    def turns(self) -> int:
        return self.visits * self.turns_per_visit

    def max_prompt_tokens(self) -> int:
        """The longest prompt this spec can produce (the last turn of the longest history)."""
        return (self.system_tokens + self.first_message_tokens + (self.turns - 1) * self.message_tokens[1]
                + (self.turns - 1) * self.answer_tokens[1])


@dataclass(slots=True)
class _Visit:
    user: int
    turns_left: int


def chat_requests(spec: ChatSpec, vocab: int) -> list[Request]:
    """The chat workload's prompts, in the order they are sent."""
    rng = random.Random(_seed(f"chat/order/{spec.seed}"))
    system = token_block(f"chat/{spec.seed}/system", spec.system_tokens, vocab)
    history: list[list[int]] = [list(system) for _ in range(spec.users)]
    turn = [0] * spec.users
    served = [-1] * spec.users  # index of each user's latest request
    queue = deque(_Visit(u, spec.turns_per_visit) for _ in range(spec.visits) for u in range(spec.users))
    active: list[_Visit] = []
    last_user: int | None = None
    out: list[Request] = []
    while queue or active:
        while len(active) < spec.active and queue:
            busy = {v.user for v in active}
            nxt = next((v for v in queue if v.user not in busy), None)
            if nxt is None:
                break
            queue.remove(nxt)
            active.append(nxt)
        # The next speaker: one of the two sessions that have waited longest (a user reads the
        # answer and types before speaking again), at random; never the one that just spoke
        # while another session is open.
        waiting = sorted((v for v in active if v.user != last_user), key=lambda v: served[v.user]) or active
        visit = rng.choice(waiting[:2])
        u, k = visit.user, turn[visit.user]
        mrng = random.Random(_seed(f"chat/{spec.seed}/user{u}/turn{k}"))
        n_msg = spec.first_message_tokens if k == 0 else _length(mrng, spec.message_tokens)
        message = token_block(f"chat/{spec.seed}/user{u}/turn{k}/message", n_msg, vocab)
        prompt = history[u] + message
        out.append(Request("chat", f"user{u}/turn{k}", tuple(prompt)))
        answer = token_block(f"chat/{spec.seed}/user{u}/turn{k}/answer", _length(mrng, spec.answer_tokens), vocab)
        history[u] = prompt + answer
        turn[u] += 1
        served[u] = len(out) - 1
        last_user = u
        visit.turns_left -= 1
        if visit.turns_left == 0:
            active.remove(visit)
    return out


# --------------------------------------------------------------------------- long-document QA


@dataclass(frozen=True, slots=True)
class DocQASpec:
    """Long-document QA: `documents` documents of `document_tokens` tokens, `questions`
    questions on each."""

    documents: int = 8
    document_tokens: int = 3200
    questions: int = 5
    question_tokens: tuple[int, int] = (24, 96)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.documents, self.document_tokens, self.questions) < 1:
            raise ValueError(f"{self}: documents, document_tokens and questions must be >= 1")

    def max_prompt_tokens(self) -> int:
        return self.document_tokens + self.question_tokens[1]


def docqa_requests(spec: DocQASpec, vocab: int) -> list[Request]:
    """The document-QA workload's prompts, in the order they are sent."""
    rng = random.Random(_seed(f"docqa/order/{spec.seed}"))
    docs = [token_block(f"docqa/{spec.seed}/doc{d}", spec.document_tokens, vocab) for d in range(spec.documents)]
    asked = [0] * spec.documents
    last: int | None = None
    out: list[Request] = []
    for _ in range(spec.documents * spec.questions):
        left = [d for d in range(spec.documents) if asked[d] < spec.questions]
        # Weighted by questions left, so that documents run out together and the end of the run
        # is interleaved too; never the previous document while another one has questions.
        choices = [x for x in left if x != last] or left
        d = rng.choices(choices, weights=[spec.questions - asked[x] for x in choices])[0]
        q = asked[d]
        n = _length(random.Random(_seed(f"docqa/{spec.seed}/doc{d}/q{q}")), spec.question_tokens)
        question = token_block(f"docqa/{spec.seed}/doc{d}/q{q}/text", n, vocab)
        out.append(Request("docqa", f"doc{d}/q{q}", tuple(docs[d] + question)))
        asked[d] += 1
        last = d
    return out


# --------------------------------------------------------------------------- Mooncake replay


@dataclass(frozen=True, slots=True)
class MooncakeSpec:
    """A scaled replay of a Mooncake trace (see the module docstring)."""

    trace: Path = MOONCAKE_CONVERSATION
    requests: int = 64
    length_scale: float = 0.25
    max_blocks: int = 8
    tail_tokens: int = 64
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        if self.requests < 1 or self.max_blocks < 1 or self.tail_tokens < 1 or self.block_tokens < 2:
            raise ValueError(f"{self}: requests, max_blocks, tail_tokens must be >= 1 and block_tokens >= 2")
        if not 0 < self.length_scale <= 1:
            raise ValueError(f"length_scale {self.length_scale}: use a fraction in (0, 1]")

    def max_prompt_tokens(self) -> int:
        return self.max_blocks * self.block_tokens + self.tail_tokens

    def kept(self, n_ids: int) -> int:
        """How many leading ids of a request with `n_ids` ids the replay keeps."""
        return max(1, min(self.max_blocks, math.ceil(n_ids * self.length_scale)))


def _conversation(ids: Sequence[int], line: int) -> str:
    """A request's conversation: its second block (the first, id 0, is every request's system
    prompt); a one-block request is a conversation of its own."""
    return f"id{ids[1]}" if len(ids) > 1 else f"line{line}"


def sample_mooncake(spec: MooncakeSpec) -> list[tuple[int, list[int]]]:
    """(trace line, kept hash ids) of the replayed requests, in trace order: whole
    conversations, taken in order of a hash of their key until there are `spec.requests`
    requests, then the first `spec.requests` of those in trace order."""
    from tierd.mrc.traces import read_mooncake

    rows = [(int(r.request_id or 0), list(r.keys)) for r in read_mooncake(spec.trace)]
    by_conv: dict[str, list[int]] = {}
    for i, (line, ids) in enumerate(rows):
        if ids:
            by_conv.setdefault(_conversation(ids, line), []).append(i)
    chosen: list[int] = []
    for conv in sorted(by_conv, key=lambda c: (_seed(f"mooncake/{c}"), c)):
        if len(chosen) >= spec.requests:
            break
        chosen.extend(by_conv[conv])
    chosen = sorted(chosen)[: spec.requests]
    return [(rows[i][0], rows[i][1][: spec.kept(len(rows[i][1]))]) for i in chosen]


def mooncake_requests(spec: MooncakeSpec, vocab: int) -> list[Request]:
    """The Mooncake replay's prompts, in trace order."""
    sampled = sample_mooncake(spec)
    room = vocab - FIRST_ID
    rank: dict[object, dict[object, int]] = {}  # parent -> child -> rank of first appearance

    def first_token(parent: object, child: object) -> int:
        children = rank.setdefault(parent, {})
        r = children.setdefault(child, len(children))
        if r >= room:
            raise ValueError(f"mooncake replay: {r + 1} different blocks follow one prefix, more than the "
                             f"{room} token ids that tell them apart; replay fewer requests")
        return FIRST_ID + r

    blocks: dict[int, list[int]] = {}
    out: list[Request] = []
    for i, (line, ids) in enumerate(sampled):
        tokens: list[int] = []
        parent: object = None
        for h in ids:
            if h not in blocks:
                blocks[h] = [first_token(parent, h)] + token_block(f"mooncake/block{h}", spec.block_tokens - 1, vocab)
            tokens += blocks[h]
            parent = h
        tail = [first_token(parent, ("tail", i))] + token_block(f"mooncake/line{line}/tail", spec.tail_tokens - 1,
                                                                vocab)
        out.append(Request("mooncake", f"line{line}/{len(ids)}blocks", tuple(tokens + tail)))
    return out


# --------------------------------------------------------------------------- capacity arithmetic


def chunk_prefixes(tokens: Sequence[int], chunk_tokens: int) -> Iterable[bytes]:
    """One chained digest per full chunk of `tokens` (the identity of a prefix, as KV keys are)."""
    h = b""
    for start in range(0, len(tokens) - chunk_tokens + 1, chunk_tokens):
        h = hashlib.blake2b(h + array("I", tokens[start:start + chunk_tokens]).tobytes(), digest_size=16).digest()
        yield h


def working_set_tokens(requests: Sequence[Request], chunk_tokens: int) -> int:
    """Tokens of KV in every distinct full chunk of prompt the workload asks for."""
    seen: set[bytes] = set()
    for r in requests:
        seen.update(chunk_prefixes(r.tokens, chunk_tokens))
    return len(seen) * chunk_tokens


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """Capacities of one run in tokens of KV (bytes = tokens * kv_bytes_per_token)."""

    kv_bytes_per_token: int
    chunk_tokens: int
    engine_blocks: int
    block_size: int
    dram_tokens: int
    nvme_tokens: int

    @property
    def engine_tokens(self) -> int:
        return self.engine_blocks * self.block_size

    @property
    def dram_bytes(self) -> int:
        return self.dram_tokens * self.kv_bytes_per_token

    @property
    def nvme_bytes(self) -> int:
        return self.nvme_tokens * self.kv_bytes_per_token

    def describe(self, name: str, working_set: int) -> dict[str, float | int | str]:
        """The workload's working set against each capacity (ratios > 1: it does not fit)."""
        return {
            "workload": name,
            "working_set_tokens": working_set,
            "working_set_MiB": round(working_set * self.kv_bytes_per_token / 2**20, 1),
            "engine_tokens": self.engine_tokens,
            "dram_tokens": self.dram_tokens,
            "nvme_tokens": self.nvme_tokens,
            "working_set_over_engine": round(working_set / self.engine_tokens, 2),
            "working_set_over_dram": round(working_set / self.dram_tokens, 2),
            "working_set_over_dram_nvme": round(working_set / (self.dram_tokens + self.nvme_tokens), 2),
        }


@dataclass(frozen=True, slots=True)
class WorkloadSet:
    """The specs of one run (full or --quick)."""

    chat: ChatSpec = field(default_factory=ChatSpec)
    docqa: DocQASpec = field(default_factory=DocQASpec)
    mooncake: MooncakeSpec = field(default_factory=MooncakeSpec)

    def build(self, name: str, vocab: int) -> list[Request]:
        if name == "chat":
            return chat_requests(self.chat, vocab)
        if name == "docqa":
            return docqa_requests(self.docqa, vocab)
        if name == "mooncake":
            return mooncake_requests(self.mooncake, vocab)
        raise ValueError(f"workload {name!r}: use chat, docqa or mooncake")

    def max_prompt_tokens(self, names: Iterable[str]) -> int:
        return max(getattr(self, n).max_prompt_tokens() for n in names)


def ideal_hit_ratio(requests: Sequence[Request], chunk_tokens: int, block_size: int) -> float:
    """The token hit ratio of a cache that never evicts: each prompt reuses the longest run of
    leading full chunks that earlier prompts had, leaving at least its last token (rounded
    down to a block) to compute, as vLLM and the connector do."""
    seen: set[bytes] = set()
    hit = total = 0
    for r in requests:
        keys = list(chunk_prefixes(r.tokens, chunk_tokens))
        run = next((i for i, k in enumerate(keys) if k not in seen), len(keys))
        hit += min(run * chunk_tokens, (len(r.tokens) - 1) // block_size * block_size)
        total += len(r.tokens)
        seen.update(keys)
    return hit / total if total else 0.0
