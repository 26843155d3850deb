"""Byte sizes as people write them ("8GiB", "8000 MB", "1.5 TiB") and as tierd prints them.

Capacities reach tierd from flags, environment variables, config files and connector configs,
so one parser decides what a size means everywhere. The grammar, and why:

- A bare integer is bytes ("4096"), so `f"{n}"` always parses back to `n`.
- SI units are powers of 1000 (KB, MB, GB, TB, PB) and IEC units powers of 1024 (KiB, MiB,
  GiB, TiB, PiB); "B" is bytes. Both are accepted because both are common in operators'
  hands (disk vendors speak SI, memory speaks IEC) and each has exactly one meaning.
- Units are case-insensitive ("8gib", "8GIB") and may follow the number after spaces.
- Single letters ("8G", "512M") are rejected, not guessed: tools disagree on whether "G" is
  10**9 or 2**30, and a 7% error in a capacity is the kind nobody notices until a tier
  overflows. The error says which two spellings to choose from.
- A fraction is allowed ("1.5GiB") and the result is rounded DOWN to a whole byte, so a
  capacity is never larger than written and `format_size`'s rounded output always parses.
- Negative sizes, exponents ("1e9"), and anything over 2**63 - 1 bytes are errors.

`format_size` prints in IEC units with at most two decimals ("1.5 GiB"), which parses back
to within 0.5% of the original value (exactly, for multiples of the unit).
"""
from __future__ import annotations

import re
from fractions import Fraction

from tierd.errors import ConfigError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PiB = 1 << 50

#: Multipliers by lower-case unit. Single letters are deliberately absent (see module doc).
UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "pib": PiB,
}

#: The largest size any tier can have; sizes travel as signed 64-bit integers on the wire.
MAX_SIZE = (1 << 63) - 1

#: Inputs longer than this are rejected before any arithmetic (no pathological parses).
_MAX_TEXT = 64

_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:_[0-9]+)*(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[a-z]*)", re.ASCII | re.IGNORECASE)

_FORMAT_UNITS = [("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)]

_HINT = "use a size like 8GiB or 8000MB (bare numbers are bytes)"


def parse_size(text: str | int, *, key: str) -> int:
    """The number of bytes `text` names; `key` says where it came from for the error message.

    Accepts an int (bytes), an integral float (what YAML/TOML give for `8e9`-style values
    written as floats) or a string in the grammar of the module docstring. Raises ConfigError
    naming `key` and the bad value otherwise.
    """
    if isinstance(text, bool):
        raise ConfigError(f"{key}={text!r}: {_HINT}")
    if isinstance(text, int):
        return _checked(text, text, key)
    if isinstance(text, float):
        if not text.is_integer():
            raise ConfigError(f"{key}={text!r}: a size in bytes must be a whole number; {_HINT}")
        return _checked(int(text), text, key)
    if not isinstance(text, str):
        raise ConfigError(f"{key}={text!r}: {_HINT}")
    stripped = text.strip()
    if len(stripped) > _MAX_TEXT:
        raise ConfigError(f"{key}={text[:_MAX_TEXT]!r}...: too long for a size; {_HINT}")
    if stripped.startswith("-"):
        raise ConfigError(f"{key}={text!r}: a size cannot be negative; {_HINT}")
    match = _SIZE_RE.fullmatch(stripped)
    if match is None:
        raise ConfigError(f"{key}={text!r}: {_HINT}")
    unit = match["unit"].lower()
    if unit not in UNITS:
        if unit in ("k", "m", "g", "t", "p"):
            number = match["num"]
            raise ConfigError(
                f"{key}={text!r}: {unit.upper()!r} is ambiguous; write {number}{unit.upper()}iB "
                f"(powers of 1024) or {number}{unit.upper()}B (powers of 1000)"
            )
        raise ConfigError(f"{key}={text!r}: unknown unit {match['unit']!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    value = Fraction(match["num"].replace("_", "")) * UNITS[unit]
    return _checked(int(value), text, key)  # int() of a non-negative Fraction rounds down


def _checked(n: int, original: object, key: str) -> int:
    if n < 0:
        raise ConfigError(f"{key}={original!r}: a size cannot be negative; {_HINT}")
    if n > MAX_SIZE:
        raise ConfigError(f"{key}={original!r}: too large; a size must be below 8 EiB")
    return n


def format_size(n: int) -> str:
    """`n` bytes for people: IEC units, at most two decimals, trailing zeros dropped.

    "0 B", "1023 B", "1 KiB", "1.5 GiB". Negative values (deltas) keep their sign.
    """
    if n < 0:
        return "-" + format_size(-n)
    if n < KiB:
        return f"{n} B"
    for i, (name, unit) in enumerate(_FORMAT_UNITS):
        if n >= unit:
            value = round(n / unit, 2)
            if value >= 1024 and i > 0:  # 1023.999 MiB rounds to 1024 MiB: say 1 GiB instead
                name, unit = _FORMAT_UNITS[i - 1]
                value = round(n / unit, 2)
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text} {name}"
    raise AssertionError("unreachable: n >= 1 KiB matches a unit")
