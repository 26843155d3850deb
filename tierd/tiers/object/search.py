"""How long is the leading run of a prompt's keys that the bucket holds? Two ways to find out.

Keys are chained (`tierd.keys`): key i names the whole prefix up to chunk i, so a node that
uploaded a prompt's chunks uploaded a leading run of its keys, and what the bucket holds of a
prompt is "present up to some position, absent from there on". Both searches below ask in
*rounds* of concurrent HEADs (`AskRound`) and hand each new stretch of the run to `Emit` as
soon as a round shows it:

- `walk` asks every key, in waves that grow (16, 64, 256 …): exact, but a 512-key run takes
  many HEADs and four or five rounds, and the replies of large waves queue behind each other.
- `bisect` asks key 0 alone first (most prompts are nowhere in the bucket, and one HEAD
  answers sooner than a dozen at once: on SeaweedFS on loopback 2.3 ms against 5 ms for 10
  concurrent ones, median), then keys far ahead (positions 4^k - 1: 3, 15, 63, 255 …, and the
  last, n-1), then `fanout` (16) evenly spaced keys inside the gap between the last present and
  the first absent position it knows of, until the gap closes. A prompt nowhere in the bucket
  costs one HEAD; one wholly in it two rounds (6 HEADs for 512 keys); any other 512-key prompt
  at most four rounds and ~40 HEADs.

Bisect *infers* the keys between two present probes: if the run has a hole there (an upload
that failed, an object deleted since), the run it reports is too long. That is safe: every read
verifies the object's header, layout, length and checksum, and a missing or bad object is a miss
that drops the key from the index (`tierd.store.moves`), so a wrong guess costs a shorter hit,
never wrong data.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Union

#: What one HEAD said of a key: its object's size, None (absent), or the store's error (unknown:
#: the search stops there, and nothing is remembered as missing).
Answer = Union[int, None, BaseException]
#: Asks one round of concurrent HEADs at these positions (ascending). It may return before every
#: answer is in once the round is decided — a position not present (absent or unknown) with every
#: position below it present — and then leaves out the positions above that one.
AskRound = Callable[[list[int]], Awaitable[dict[int, Answer]]]
#: Keys [start, stop) are in the run (asked, or inferred by bisect); `sizes` holds the object sizes
#: HEADs gave so far, by position.
Emit = Callable[[int, int, dict[int, int]], None]

STRATEGIES = ("bisect", "walk")


def far_ahead(n: int, step: int = 4) -> list[int]:
    """Where to look once key 0 is present: positions step^k - 1 (3, 15, 63, 255 …) and the last
    one, n - 1, of an n-key run."""
    positions = {n - 1} if n > 1 else set()
    p = step - 1
    while p < n:
        positions.add(p)
        p = (p + 1) * step - 1
    return sorted(positions)


def inside(lo: int, hi: int, fanout: int) -> list[int]:
    """Up to `fanout` evenly spaced positions strictly between `lo` (present) and `hi` (absent);
    all of them when there are no more than `fanout`."""
    gap = hi - lo - 1
    if gap <= fanout:
        return list(range(lo + 1, hi))
    return sorted({lo + (hi - lo) * i // (fanout + 1) for i in range(1, fanout + 1)})


def settle(answers: dict[int, Answer], lo: int, hi: int) -> tuple[int, int, bool]:
    """Narrow (lo, hi) — last position known present, first known not present — by a round's
    answers. Returns (lo, hi, failed): `failed` if the store gave an error below `hi` (the
    search should stop; the run is known up to `lo`). A present answer above an absent one (a
    hole seen) is ignored: the run ends at the first position not present."""
    failed = False
    for p in sorted(answers):
        if p >= hi:
            break
        a = answers[p]
        if isinstance(a, int):
            lo = max(lo, p)
        else:
            hi = p
            failed = isinstance(a, BaseException)
    return lo, hi, failed


async def bisect(n: int, ask: AskRound, emit: Emit, *, fanout: int = 16) -> int:
    """The run's length, in a bounded number of rounds (see the module docstring)."""
    if n <= 0:
        return 0
    sizes: dict[int, int] = {}
    lo, hi, emitted = -1, n, 0
    positions = [0]
    while positions:
        answers = await ask(positions)
        sizes.update((p, a) for p, a in answers.items() if isinstance(a, int))
        before = (lo, hi)
        lo, hi, failed = settle(answers, lo, hi)
        if lo + 1 > emitted:
            emit(emitted, lo + 1, sizes)
            emitted = lo + 1
        if failed or lo < 0 or (lo, hi) == before:  # (no progress: a round that answered nothing)
            break
        positions = far_ahead(n) if before == (-1, n) else inside(lo, hi, fanout)
    return emitted


async def walk(n: int, ask: AskRound, emit: Emit, *, first_wave: int = 16, growth: int = 4,
               max_wave: int = 256) -> int:
    """The run's length, asking every key in waves that grow `growth`-fold (the search before
    `bisect`; kept to compare with it, `--object-lookup-strategy walk`)."""
    sizes: dict[int, int] = {}
    start, wave = 0, first_wave
    while start < n:
        positions = list(range(start, min(start + wave, n)))
        answers = await ask(positions)
        sizes.update((p, a) for p, a in answers.items() if isinstance(a, int))
        stop = start
        while stop < positions[-1] + 1 and isinstance(answers.get(stop), int):
            stop += 1
        if stop > start:
            emit(start, stop, sizes)
        if stop < positions[-1] + 1:
            return stop
        start, wave = stop, min(wave * growth, max_wave)
    return start
