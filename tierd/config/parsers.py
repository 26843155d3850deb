"""The value parsers: one function per kind of option value, shared by every source.

Each takes (raw value, where it came from, base dir for relative paths or None for the
working directory) and returns the typed value or raises ConfigError naming `where` and
saying what to write instead. Raw values are strings from the environment and flags, and
native types from a config file; every parser is idempotent, so Config can re-validate values
that were already parsed. Which option uses which parser is the option table's business
(tierd.config.options); who may connect is parsed in tierd.config.users.

Paths (socket, nvme_dir, record_trace) are stored absolute, with `~` expanded. A relative path
in a config file is relative to the file's directory (so the file means the same thing from
any working directory); one from the environment or a flag is relative to the working
directory, as the shell would read it. Sizes follow `tierd.sizes` (8GiB, 8000MB, bytes).

Switching things off: metrics_port, object_url, quotas, namespaces and encrypt_key_file take "off"/"none"/""
(or YAML/TOML false/null), and record_trace takes "" (or false/null), so the environment or a
flag can turn off what a file turned on. For every other option an empty value is an error;
unset the variable instead. socket_mode strings are always octal ("0600", "600", "0o600"); an
integer in a file is the mode itself (TOML `0o600`, YAML `0600`), and must leave the owner
read and write.
"""
from __future__ import annotations

import math
import os
import re

from tierd.errors import ConfigError
from tierd.keys import namespace_problem
from tierd.sizes import GiB, KiB, parse_size

#: Longest Unix socket path Linux can bind (sun_path is 108 bytes including the NUL).
MAX_SOCKET_PATH_BYTES = 107

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_OFF_WORDS = ("", "off", "none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def is_off(value: object) -> bool:
    """Whether a value switches an optional feature off: None, false, or one of _OFF_WORDS."""
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS)


def parse_path(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(f"{where}={value!r}: give a file system path")
    path = os.path.expanduser(value)
    if base is not None:
        path = os.path.join(base, path)
    return os.path.abspath(path)


def parse_socket(value: object, where: str, base: str | None) -> str:
    path = parse_path(value, where, base)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"{where}={value!r}: the socket path {path!r} is longer than the "
            f"{MAX_SOCKET_PATH_BYTES} bytes a Unix socket allows; choose a shorter path"
        )
    return path


def parse_optional_path(value: object, where: str, base: str | None) -> str | None:
    if value is None or value is False or value == "":
        return None
    return parse_path(value, where, base)


def parse_key_file(value: object, where: str, base: str | None) -> str | None:
    """The encryption key file's path ("off"/"none"/"": no encryption). Only the path: the daemon
    reads and checks the key when it builds its tiers (tierd.tiers.crypto.load_key_file), so a
    client reading the same configuration never needs access to the key."""
    if is_off(value):
        return None
    return parse_path(value, where, base)


def parse_dram(value: object, where: str, base: str | None) -> int:
    n = parse_size(value, key=where)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError(f"{where}={value!r}: the DRAM tier needs room for at least one chunk; use a size like 8GiB")
    return n


def parse_capacity(value: object, where: str, base: str | None) -> int:
    """A byte capacity where 0 is allowed (a 0 NVMe tier is off; a 0 object budget only reads)."""
    return parse_size(value, key=where)  # type: ignore[arg-type]


def parse_object_url(value: object, where: str, base: str | None) -> str | None:
    """s3://bucket[/prefix], file:///absolute/dir or memory:// (none/off: no object tier)."""
    if is_off(value):
        return None
    url = value.strip() if isinstance(value, str) else None
    m = re.fullmatch(r"(s3a?|file|memory)://(.*)", url or "", re.ASCII)
    if url is None or m is None:
        raise ConfigError(f"{where}={value!r}: use s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL), "
                          f"file:///absolute/dir or memory://")
    scheme, rest = m[1], m[2]
    if scheme.startswith("s3") and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?", rest):
        raise ConfigError(f"{where}={value!r}: {rest.split('/')[0]!r} is not a valid bucket name "
                          f"(3-63 lowercase letters, digits, dots, hyphens); use s3://bucket/prefix")
    if scheme == "file" and not rest.startswith("/"):
        raise ConfigError(f"{where}={value!r}: a file:// URL needs an absolute path, like file:///var/tierd/objects")
    return url


def parse_object_write(value: object, where: str, base: str | None) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in ("through", "back"):
        raise ConfigError(f"{where}={value!r}: use 'through' (upload every chunk when committed) or "
                          f"'back' (upload on eviction from the last local tier)")
    return mode


def parse_lookup_strategy(value: object, where: str, base: str | None) -> str:
    """How the object tier's prefix probe searches (tierd.tiers.object.search.STRATEGIES)."""
    from tierd.tiers.object.search import STRATEGIES

    name = value.strip().lower() if isinstance(value, str) else None
    if name not in STRATEGIES:
        raise ConfigError(f"{where}={value!r}: use 'bisect' (probe far ahead along the prompt's keys, then "
                          f"narrow the gap) or 'walk' (ask every key, in growing waves)")
    return name


def parse_policy(value: object, where: str, base: str | None) -> str:
    """An eviction policy's name (tierd.policies.POLICIES)."""
    from tierd.policies import POLICIES

    name = value.strip().lower() if isinstance(value, str) else None
    if name not in POLICIES:
        raise ConfigError(f"{where}={value!r}: not an eviction policy; use one of {', '.join(sorted(POLICIES))}")
    return name


def parse_admission(value: object, where: str, base: str | None) -> str:
    """An admission filter's name (tierd.policies.admission.ADMISSIONS)."""
    from tierd.policies.admission import ADMISSIONS

    name = value.strip().lower() if isinstance(value, str) else None
    if name not in ADMISSIONS:
        raise ConfigError(f"{where}={value!r}: use 'all' (every chunk leaving DRAM is written), "
                          f"'reuse' (only chunks used a second time) or 'adaptive' (reuse, plus each "
                          f"prompt's first chunks up to a depth it learns online)")
    return name


def parse_codec(value: object, where: str, base: str | None) -> str:
    """A chunk codec spec (tierd.codecs), stored in its canonical form ("zstd" -> "zstd:3")."""
    from tierd.codecs import get_codec
    from tierd.errors import CodecError

    try:
        return get_codec(value).name  # type: ignore[arg-type]
    except CodecError as exc:
        raise ConfigError(f"{where}={value!r}: {exc}") from None


def parse_codec_device(value: object, where: str, base: str | None) -> str:
    device = value.strip().lower() if isinstance(value, str) else None
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{where}={value!r}: use auto (CUDA where torch sees a device), cpu or cuda")
    return device


def parse_quotas(value: object, where: str, base: str | None) -> dict[str, int]:
    """Per-namespace byte quotas on each local tier: "tenantA:2GiB,tenantB:512MiB" (or a TOML/YAML
    table of namespace to size). "", "off" or "none": no quotas."""
    hint = "give namespace:size pairs separated by commas, like tenantA:2GiB,tenantB:512MiB, or off"
    if is_off(value):
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for word in value.split(","):
            namespace, sep, size = word.strip().rpartition(":")
            if not sep:
                raise ConfigError(f"{where}={value!r}: {word.strip()!r} is not namespace:size; {hint}")
            pairs.append((namespace, size))
    else:
        raise ConfigError(f"{where}={value!r}: {hint}")
    quotas: dict[str, int] = {}
    for namespace, size in pairs:
        problem = namespace_problem(namespace.strip() if isinstance(namespace, str) else namespace)
        if problem is not None or "," in namespace:
            raise ConfigError(f"{where}={value!r}: {problem or f'namespace {namespace!r}: no commas'}; {hint}")
        try:
            n = parse_size(size, key=f"quota of {namespace.strip()!r}")  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{where}={value!r}: {exc}") from None
        if n <= 0:
            raise ConfigError(f"{where}={value!r}: the quota of {namespace.strip()!r} must be more than 0 bytes")
        quotas[namespace.strip()] = n
    return quotas


def parse_seconds(value: object, where: str, base: str | None) -> float:
    """A duration in seconds: 5, 0.05, "50ms", "2s"."""
    number = _number_with_unit(value, {"ms": 1000, "s": 1})
    if number is None or not 0 < number <= 600:
        raise ConfigError(f"{where}={value!r}: use a duration above 0 and at most 600 seconds, like 5, 0.05 or 50ms")
    return number


def parse_node_id(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip().encode()) <= 64 or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{where}={value!r}: use a name of 1 to 64 bytes without spaces, like the host name")
    return value.strip()


def parse_max_frame(value: object, where: str, base: str | None) -> int:
    n = parse_size(value, key=where)  # type: ignore[arg-type]
    if not KiB <= n < 4 * GiB:
        raise ConfigError(f"{where}={value!r}: use a size from 1KiB to below 4GiB, like 16MiB")
    return n


def _number_with_unit(value: object, units: dict[str, int]) -> float | None:
    """A finite number: a file's int or float as it is, or a string of digits with an optional
    unit suffix from `units`, divided by that unit's divisor ("50ms" -> 0.05). None when the
    value is neither; the caller checks the range and words the error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range, which YAML allows
            return None
    elif isinstance(value, str):
        suffixes = "|".join(map(re.escape, units))
        m = re.fullmatch(rf"\s*([0-9]*\.?[0-9]+)\s*({suffixes})?\s*", value, re.ASCII)
        if m is None:
            return None
        number = float(m[1]) / units.get(m[2] or "", 1)
    else:
        return None
    return number if math.isfinite(number) else None


def _parse_int(value: object, where: str, lo: int, hi: int, hint: str) -> int:
    number = value
    if isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", value, re.ASCII):
        number = int(value)
    if not isinstance(number, int) or isinstance(number, bool) or not lo <= number <= hi:
        raise ConfigError(f"{where}={value!r}: {hint}")
    return number


def parse_port(value: object, where: str, base: str | None) -> int | None:
    if is_off(value):
        return None
    return _parse_int(value, where, 0, 65535, "use a port from 0 to 65535 (0 picks a free port), or 'off'")


def parse_io_threads(value: object, where: str, base: str | None) -> int:
    return _parse_int(value, where, 1, 64, "use a whole number of threads from 1 to 64")


def parse_quarantine_after(value: object, where: str, base: str | None) -> int:
    return _parse_int(value, where, 0, 1_000_000,
                      "use a whole number of diverged chunks, e.g. 3 (0: never quarantine)")


def parse_host(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{where}={value!r}: give a host name or IP address to bind, like 127.0.0.1")
    return value.strip()


def parse_log_level(value: object, where: str, base: str | None) -> str:
    level = value.strip().upper() if isinstance(value, str) else None
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"{where}={value!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def parse_bool(value: object, where: str, base: str | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ConfigError(f"{where}={value!r}: use true or false (also 1/0, yes/no, on/off)")


def parse_fraction(value: object, where: str, base: str | None) -> float:
    """A fraction in (0, 1] (of DRAM, or of keys sampled); "85%" is accepted as 0.85."""
    number = _number_with_unit(value, {"%": 100})
    if number is None or not 0 < number <= 1:
        raise ConfigError(f"{where}={value!r}: use a fraction above 0 and at most 1, like 0.9 or 90%")
    return number


def parse_mode(value: object, where: str, base: str | None) -> int:
    """Permission bits. Strings are octal ("0600", "600", "0o600"); ints are the mode itself,
    which is what TOML `0o600` and YAML `0600` literals give."""
    mode: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(?:0o)?([0-7]{1,4})\s*", value, re.ASCII | re.IGNORECASE)
        if m:
            mode = int(m[1], 8)
    if mode is None or not 0 <= mode <= 0o777:
        raise ConfigError(f"{where}={value!r}: use octal permission bits as a string, like \"0600\" or \"0660\"")
    if mode & 0o600 != 0o600:
        raise ConfigError(
            f"{where}={value!r}: the owner needs read and write permission to connect to the socket; "
            f"use a mode like \"0600\" or \"0660\""
        )
    return mode
