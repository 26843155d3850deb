"""The daemon's configuration: one frozen `Config`, loaded from four sources.

Precedence, lowest to highest:

    built-in defaults  <  config file  <  TIERD_* environment variables  <  command-line flags

so a file holds the site's settings, the environment adjusts them per unit or container, and a
flag wins for a one-off run. Every option has the same name in all four places: `dram` in the
file (top level or under a `[tierd]` table), `TIERD_DRAM` in the environment, `--dram` on the
command line, `Config.dram` in code. The config file is named by `--config`, else by
`TIERD_CONFIG`; there is no implicit config file, so a run is reproducible from what it was
given. A TOML file is read with tomllib; a file ending in .yaml or .yml with PyYAML.

Why strict: a typo in a capacity or a key silently falling back to a default is the kind of
mistake that shows up weeks later as a full disk or a cold cache. So unknown file keys and
unknown TIERD_* variables are errors (with a "did you mean"), and every bad value raises a
`ConfigError` that names where it came from (`TIERD_DRAM='lots': ...`, `--io-threads='0': ...`,
`/etc/tierd.toml: dram='lots': ...`) and says what to write instead.

Paths (socket, nvme_dir, record_trace) are stored absolute, with `~` expanded. A relative path
in a config file is relative to the file's directory (so the file means the same thing from
any working directory); one from the environment or a flag is relative to the working
directory, as the shell would read it. Sizes follow `tierd.sizes` (8GiB, 8000MB, bytes).

Switching things off: metrics_port takes "off"/"none"/"" (or YAML/TOML false/null), and
record_trace takes "" (or false/null), so the environment or a flag can turn off what a file
turned on. For every other option an empty value is an error; unset the variable instead.
socket_mode strings are always octal ("0600", "600", "0o600"); an integer in a file is the
mode itself (TOML `0o600`, YAML `0600`), and must leave the owner read and write.

Machine-dependent defaults (socket path, DRAM and NVMe capacities) are computed only when no
source sets the option, and the NVMe default looks at the filesystem of the *final* nvme_dir.
Loading has no side effects: it creates no directory and no socket.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import pwd
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tierd.errors import ConfigError
from tierd.sizes import GiB, KiB, MiB, parse_size

#: Environment variables with the TIERD_ prefix that are not options. Every other TIERD_*
#: variable must name an option; add here any that another part of tierd reads itself.
NON_OPTION_ENV_VARS: frozenset[str] = frozenset({"TIERD_CONFIG"})

#: Longest Unix socket path Linux can bind (sun_path is 108 bytes including the NUL).
MAX_SOCKET_PATH_BYTES = 107

#: Granularity and floor of the default DRAM capacity.
DRAM_GRANULE = 64 * MiB

#: The NVMe default never takes more than this, however large the disk.
NVME_DEFAULT_CAP = 64 * GiB

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_OFF_WORDS = ("", "off", "none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


# --------------------------------------------------------------------------------------------
# Value parsers. Each takes (raw value, where it came from, base dir for relative paths or
# None for the working directory) and returns the typed value or raises ConfigError. Raw
# values are strings from the environment and flags, and native types from a config file;
# every parser is idempotent, so Config can re-validate values that were already parsed.


def _parse_path(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(f"{where}={value!r}: give a file system path")
    path = os.path.expanduser(value)
    if base is not None:
        path = os.path.join(base, path)
    return os.path.abspath(path)


def _parse_socket(value: object, where: str, base: str | None) -> str:
    path = _parse_path(value, where, base)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"{where}={value!r}: the socket path {path!r} is longer than the "
            f"{MAX_SOCKET_PATH_BYTES} bytes a Unix socket allows; choose a shorter path"
        )
    return path


def _parse_optional_path(value: object, where: str, base: str | None) -> str | None:
    if value is None or value is False or value == "":
        return None
    return _parse_path(value, where, base)


def _parse_dram(value: object, where: str, base: str | None) -> int:
    n = parse_size(value, key=where)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError(f"{where}={value!r}: the DRAM tier needs room for at least one chunk; use a size like 8GiB")
    return n


def _parse_nvme(value: object, where: str, base: str | None) -> int:
    return parse_size(value, key=where)  # type: ignore[arg-type]


def parse_object_url(value: object, where: str, base: str | None) -> str | None:
    """s3://bucket[/prefix], file:///absolute/dir or memory:// (none/off: no object tier)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS):
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


def _parse_object_write(value: object, where: str, base: str | None) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in ("through", "back"):
        raise ConfigError(f"{where}={value!r}: use 'through' (upload every chunk when committed) or "
                          f"'back' (upload on eviction from the last local tier)")
    return mode


def _parse_codec(value: object, where: str, base: str | None) -> str:
    """A chunk codec spec (tierd.codecs), stored in its canonical form ("zstd" -> "zstd:3")."""
    from tierd.codecs import get_codec
    from tierd.errors import CodecError

    try:
        return get_codec(value).name  # type: ignore[arg-type]
    except CodecError as exc:
        raise ConfigError(f"{where}={value!r}: {exc}") from None


def _parse_codec_device(value: object, where: str, base: str | None) -> str:
    device = value.strip().lower() if isinstance(value, str) else None
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{where}={value!r}: use auto (CUDA where torch sees a device), cpu or cuda")
    return device


def _parse_quotas(value: object, where: str, base: str | None) -> dict[str, int]:
    """Per-namespace byte quotas on each local tier: "tenantA:2GiB,tenantB:512MiB" (or a TOML/YAML
    table of namespace to size). "", "off" or "none": no quotas."""
    hint = "give namespace:size pairs separated by commas, like tenantA:2GiB,tenantB:512MiB, or off"
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS):
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
        if not isinstance(namespace, str) or not namespace.strip() or "," in namespace or len(namespace) > 255:
            raise ConfigError(f"{where}={value!r}: namespace {namespace!r}: use a non-empty name of at most 255 "
                              f"characters without commas; {hint}")
        try:
            n = parse_size(size, key=f"quota of {namespace.strip()!r}")  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{where}={value!r}: {exc}") from None
        if n <= 0:
            raise ConfigError(f"{where}={value!r}: the quota of {namespace.strip()!r} must be more than 0 bytes")
        quotas[namespace.strip()] = n
    return quotas


def _parse_seconds(value: object, where: str, base: str | None) -> float:
    """A duration in seconds: 5, 0.05, "50ms", "2s"."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", value, re.ASCII)
        if m:
            number = float(m[1]) / (1000 if m[2] == "ms" else 1)
    if number is None or not math.isfinite(number) or not 0 < number <= 600:
        raise ConfigError(f"{where}={value!r}: use a duration above 0 and at most 600 seconds, like 5, 0.05 or 50ms")
    return number


def _parse_node_id(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip().encode()) <= 64 or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{where}={value!r}: use a name of 1 to 64 bytes without spaces, like the host name")
    return value.strip()


def _parse_max_frame(value: object, where: str, base: str | None) -> int:
    n = parse_size(value, key=where)  # type: ignore[arg-type]
    if not KiB <= n < 4 * GiB:
        raise ConfigError(f"{where}={value!r}: use a size from 1KiB to below 4GiB, like 16MiB")
    return n


def _parse_int(value: object, where: str, lo: int, hi: int, hint: str) -> int:
    number = value
    if isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]+\s*", value, re.ASCII):
        number = int(value)
    if not isinstance(number, int) or isinstance(number, bool) or not lo <= number <= hi:
        raise ConfigError(f"{where}={value!r}: {hint}")
    return number


def _parse_port(value: object, where: str, base: str | None) -> int | None:
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS):
        return None
    return _parse_int(value, where, 0, 65535, "use a port from 0 to 65535 (0 picks a free port), or 'off'")


def _parse_io_threads(value: object, where: str, base: str | None) -> int:
    return _parse_int(value, where, 1, 64, "use a whole number of threads from 1 to 64")


def _parse_host(value: object, where: str, base: str | None) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{where}={value!r}: give a host name or IP address to bind, like 127.0.0.1")
    return value.strip()


def _parse_log_level(value: object, where: str, base: str | None) -> str:
    level = value.strip().upper() if isinstance(value, str) else None
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"{where}={value!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


def _parse_bool(value: object, where: str, base: str | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ConfigError(f"{where}={value!r}: use true or false (also 1/0, yes/no, on/off)")


def _parse_fraction(value: object, where: str, base: str | None) -> float:
    """A fraction in (0, 1] (of DRAM, or of keys sampled); "85%" is accepted as 0.85."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", value, re.ASCII)
        if m:
            number = float(m[1]) / (100 if m[2] else 1)
    if number is None or not math.isfinite(number) or not 0 < number <= 1:
        raise ConfigError(f"{where}={value!r}: use a fraction above 0 and at most 1, like 0.9 or 90%")
    return number


def _parse_mode(value: object, where: str, base: str | None) -> int:
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


#: Largest uid Linux hands out ((uid_t)-1 means "no uid").
MAX_UID = 2**32 - 2

_USERS_HINT = "give uids (numbers), user names or self (the daemon's own user), separated by commas, like self,1001,alice"


def _resolve_user(word: str, where: str, value: object) -> str:
    """'self', a uid or a user name, as 'self' or the uid's digits (names are resolved now, so a
    typo stops the daemon at start instead of locking a user out later)."""
    if word == "self":
        return word
    if re.fullmatch(r"[0-9]+", word, re.ASCII):
        if int(word) > MAX_UID:
            raise ConfigError(f"{where}={value!r}: uid {word} is out of range; {_USERS_HINT}")
        return str(int(word))
    try:
        return str(pwd.getpwnam(word).pw_uid)
    except KeyError:
        raise ConfigError(f"{where}={value!r}: there is no user {word!r} on this machine; {_USERS_HINT}") from None


def _user_words(value: object, where: str, hint: str) -> list[str]:
    """The comma-separated words of a string, or the items of a TOML/YAML list (ints allowed)."""
    if isinstance(value, str):
        items: list[object] = value.split(",")
    elif isinstance(value, list):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise ConfigError(f"{where}={value!r}: {hint}")
    words = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}={value!r}: {hint}")
        words.append(item.strip())
    return words


def _parse_allow_uids(value: object, where: str, base: str | None) -> str:
    """Who may connect, checked on every connection (SO_PEERCRED): "self" (the default: only the
    daemon's own user), uids and user names. Kept as "self" and uids, comma separated, so the
    value prints in `stat` and loads back as it is."""
    words = _user_words(value, where, _USERS_HINT)
    if not words:
        raise ConfigError(f"{where}={value!r}: nobody could connect; {_USERS_HINT}")
    return ",".join(dict.fromkeys(_resolve_user(w, where, value) for w in words))


def _parse_namespaces(value: object, where: str, base: str | None) -> str:
    """Namespace bindings by user: "1001:tenantA,alice:tenantB" (or a TOML/YAML table of user to
    namespace, or a list of "user:namespace" strings). A connection from a listed user sees and
    writes only chunks of its namespace. "", "off" or "none": no bindings. Kept as
    "uid:namespace" pairs, comma separated (so a namespace here cannot contain a comma)."""
    hint = ("give user:namespace pairs separated by commas, like 1001:tenantA,alice:tenantB "
            "(user: a uid, a user name or self), or off")
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS):
        return ""
    if isinstance(value, dict):
        pairs: list[tuple[str, object]] = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for word in _user_words(value, where, hint):
            user, sep, namespace = word.partition(":")
            if not sep or not user.strip():
                raise ConfigError(f"{where}={value!r}: {word!r} is not user:namespace; {hint}")
            pairs.append((user, namespace))
    if not pairs:
        raise ConfigError(f"{where}={value!r}: {hint}")
    bound: dict[str, str] = {}
    for user, namespace in pairs:
        name = namespace.strip() if isinstance(namespace, str) else ""
        if not name or len(name) > 255 or "," in name:
            raise ConfigError(f"{where}={value!r}: namespace {namespace!r} of user {user!r}: use a non-empty "
                              f"name of at most 255 characters without commas; {hint}")
        uid = _resolve_user(user.strip(), where, value)
        if bound.get(uid, name) != name:
            raise ConfigError(f"{where}={value!r}: user {user!r} is bound to two namespaces "
                              f"({bound[uid]!r} and {name!r}); give each user one")
        bound[uid] = name
    return ",".join(f"{uid}:{name}" for uid, name in bound.items())


# --------------------------------------------------------------------------------------------
# Machine-dependent defaults.


def _xdg_dir(env: Mapping[str, str], name: str) -> str | None:
    """An XDG base directory variable, if set to an absolute path (the spec says to ignore
    relative ones)."""
    value = env.get(name, "")
    return value if os.path.isabs(value) else None


def default_socket_path(*, env: Mapping[str, str] | None = None) -> str:
    """Where the daemon listens when no socket is configured, and where a client looks.

    `$XDG_RUNTIME_DIR/tierd.sock` when that is a writable directory (per-user, private,
    cleaned at logout), else `/tmp/tierd-<uid>.sock` (per-user name, so two users on one
    node get two daemons). Does not read TIERD_SOCKET: that is an option, see load_config.
    """
    env = os.environ if env is None else env
    runtime = _xdg_dir(env, "XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        path = os.path.join(runtime, "tierd.sock")
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
            return path
    return f"/tmp/tierd-{os.getuid()}.sock"


def default_nvme_dir(*, env: Mapping[str, str] | None = None) -> str:
    """`$XDG_CACHE_HOME/tierd/chunks`, else `~/.cache/tierd/chunks`: chunks are a cache, so
    they live where caches live and backup tools know to skip them."""
    env = os.environ if env is None else env
    cache = _xdg_dir(env, "XDG_CACHE_HOME")
    if cache is None:
        home = env.get("HOME") or os.path.expanduser("~")
        cache = os.path.join(home, ".cache")
    return os.path.abspath(os.path.join(cache, "tierd", "chunks"))


def default_dram_bytes() -> int:
    """A DRAM capacity that fits this machine.

    min(25% of physical RAM, free space of /dev/shm minus a margin), floored to 64 MiB and at
    least 64 MiB. A quarter of RAM leaves the engine, the OS and the page cache (which the NVMe
    tier relies on) their share; the /dev/shm bound keeps the arena from failing to map in a
    container with a small shm. The margin (10% of the free space, at least 256 MiB) leaves
    room for the others that use /dev/shm on an inference node (engine IPC, NCCL).
    """
    candidates: list[int] = []
    try:
        candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        st = os.statvfs("/dev/shm")
        free = st.f_bavail * st.f_frsize
        candidates.append(free - max(256 * MiB, free // 10))
    except OSError:
        pass
    size = min(candidates) if candidates else 1 * GiB
    return max(DRAM_GRANULE, size // DRAM_GRANULE * DRAM_GRANULE)


def default_nvme_bytes(nvme_dir: str) -> int:
    """min(10% of the free space where `nvme_dir` is or would be created, 64 GiB), floored to
    1 MiB: a cache should not be the thing that fills a shared disk. 0 (tier off) when the
    filesystem cannot be examined."""
    path = Path(nvme_dir)
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        return min(free // 10, NVME_DEFAULT_CAP) // MiB * MiB
    return 0


# --------------------------------------------------------------------------------------------
# The options and the Config.


@dataclass(frozen=True, slots=True)
class _Option:
    """One option: its name everywhere, its parser and its help text."""

    name: str
    parse: Callable[[object, str, str | None], Any]
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "TIERD_" + self.name.upper()


_OPTIONS: tuple[_Option, ...] = (
    _Option("socket", _parse_socket, "PATH",
            "Unix socket to listen on (default: $XDG_RUNTIME_DIR/tierd.sock, else /tmp/tierd-<uid>.sock)"),
    _Option("dram", _parse_dram, "SIZE",
            "DRAM tier capacity, e.g. 8GiB (default: min(25%% of RAM, free /dev/shm less a margin))"),
    _Option("nvme_dir", _parse_path, "DIR",
            "directory of the NVMe tier (default: $XDG_CACHE_HOME/tierd/chunks or ~/.cache/tierd/chunks)"),
    _Option("nvme", _parse_nvme, "SIZE",
            "NVMe tier capacity; 0 turns the tier off (default: min(10%% of free space there, 64GiB))"),
    _Option("metrics_port", _parse_port, "PORT",
            "serve Prometheus metrics on this port; 0 picks a free one (default: off)"),
    _Option("metrics_host", _parse_host, "HOST", "address the metrics server binds (default: 127.0.0.1)"),
    _Option("log_level", _parse_log_level, "LEVEL", "DEBUG, INFO, WARNING or ERROR (default: INFO)"),
    _Option("record_trace", _parse_optional_path, "FILE", "write the access trace to this Parquet file (default: off)"),
    _Option("calibrate", _parse_bool, "BOOL", "measure tier bandwidth and latency at start (default: on)"),
    _Option("demote_high_watermark", _parse_fraction, "FRACTION",
            "start demoting from DRAM when it is this full (default: 0.95)"),
    _Option("demote_low_watermark", _parse_fraction, "FRACTION",
            "stop demoting when DRAM is down to this full (default: 0.85)"),
    _Option("max_frame_bytes", _parse_max_frame, "SIZE", "largest control message accepted (default: 16MiB)"),
    _Option("socket_mode", _parse_mode, "MODE", "permission bits of the socket, octal (default: 0600)"),
    _Option("io_threads", _parse_io_threads, "N", "threads doing tier I/O, 1 to 64 (default: 4)"),
    _Option("mrc_sample_rate", _parse_fraction, "RATE",
            "share of chunk keys the online hit-rate curve samples, in (0, 1] (default: 0.01)"),
    _Option("object_url", parse_object_url, "URL",
            "object tier shared by all nodes: s3://bucket/prefix (endpoint and credentials from the "
            "AWS_* variables), file:///dir or memory:// (default: off)"),
    _Option("object", _parse_nvme, "SIZE",
            "most bytes this node writes to the object tier; 0 only reads (default: 1TiB)"),
    _Option("object_write", _parse_object_write, "MODE",
            "'through': upload every committed chunk in the background; 'back': only on eviction "
            "from the last local tier (default: through)"),
    _Option("object_timeout", _parse_seconds, "SECONDS", "deadline of one object-store request (default: 5)"),
    _Option("object_lookup_budget", _parse_seconds, "SECONDS",
            "how long a lookup may wait on the object tier for keys missing locally (default: 50ms)"),
    _Option("object_queue", _parse_nvme, "SIZE",
            "bytes of chunks waiting for upload; beyond it the oldest are dropped (default: 1GiB)"),
    _Option("node_id", _parse_node_id, "NAME", "this node's name in the objects it writes (default: host name)"),
    _Option("nvme_codec", _parse_codec, "CODEC",
            "how the NVMe tier stores chunks: raw, zstd[:LEVEL], zstd-shuffle[:LEVEL] (lossless), "
            "int8k-tq3v or int8k-tq4v (lossy) (default: raw)"),
    _Option("object_codec", _parse_codec, "CODEC",
            "how this node writes chunks to the object tier; same choices as --nvme-codec (default: raw)"),
    _Option("codec_device", _parse_codec_device, "DEVICE",
            "where the quantised codecs run: auto (CUDA where torch sees a device), cpu or cuda (default: auto)"),
    _Option("allow_uids", _parse_allow_uids, "USERS",
            "who may connect (checked on every connection): uids, user names and self (the "
            "daemon's own user), comma separated; root only if listed (default: self)"),
    _Option("namespaces", _parse_namespaces, "USER:NS,...",
            "bind users to namespaces, e.g. 1001:tenantA,alice:tenantB: their connections see and "
            "write only chunks of that namespace (default: off)"),
    _Option("progress_interval", _parse_seconds, "SECONDS",
            "seconds between progress lines of long start-up and shutdown steps (default: 1)"),
    _Option("quotas", _parse_quotas, "NS:SIZE,...",
            "byte quota of a namespace on each local tier (DRAM, NVMe), e.g. tenantA:2GiB,tenantB:512MiB: "
            "over it, the namespace's own oldest chunks make room (default: off)"),
)

_BY_NAME: dict[str, _Option] = {opt.name: opt for opt in _OPTIONS}


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's settings. Frozen: read once at start, shared by every part of the daemon.

    Constructing one directly (embedded mode, tests) validates and normalises every field the
    same way load_config does (sizes and modes may be given as strings, paths become
    absolute), so an invalid Config cannot exist. The first four fields have no static
    default because theirs depend on the machine; load_config computes them.
    """

    socket: str
    dram: int
    nvme_dir: str
    nvme: int
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    record_trace: str | None = None
    calibrate: bool = True
    demote_high_watermark: float = 0.95
    demote_low_watermark: float = 0.85
    max_frame_bytes: int = 16 * MiB
    socket_mode: int = 0o600
    io_threads: int = 4
    mrc_sample_rate: float = 0.01
    object_url: str | None = None
    object: int = 1 << 40
    object_write: str = "through"
    object_timeout: float = 5.0
    object_lookup_budget: float = 0.05
    object_queue: int = 1 << 30
    node_id: str = dataclasses.field(default_factory=socket.gethostname)
    nvme_codec: str = "raw"
    object_codec: str = "raw"
    codec_device: str = "auto"
    allow_uids: str = "self"
    namespaces: str = ""
    progress_interval: float = 1.0
    quotas: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for opt in _OPTIONS:
            object.__setattr__(self, opt.name, opt.parse(getattr(self, opt.name), f"Config.{opt.name}", None))
        _check_watermarks(self.demote_low_watermark, "Config.demote_low_watermark",
                          self.demote_high_watermark, "Config.demote_high_watermark")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON/YAML values, for `tierd stat`. socket_mode is written as
        an octal string ("0600") for people; the result loads back as a config file."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["socket_mode"] = f"{self.socket_mode:04o}"
        return out


def _check_watermarks(low: float, low_where: str, high: float, high_where: str) -> None:
    if not low < high:
        raise ConfigError(
            f"demote_low_watermark={low} (from {low_where}) must be below "
            f"demote_high_watermark={high} (from {high_where}): demotion runs from the high "
            f"watermark down to the low one; set them like 0.85 and 0.95"
        )


# --------------------------------------------------------------------------------------------
# Sources.


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config and one flag per option to `parser` (the `tierd serve` parser).

    Every flag defaults to None, meaning "not given", so load_config can let the environment
    and the config file show through. Values stay strings here and are validated by
    load_config, so a bad flag gives the same ConfigError as a bad file key or variable.
    """
    group = parser.add_argument_group(
        "configuration",
        "Each option can also be set in the config file (same name) or as TIERD_<NAME> in the "
        "environment. Precedence: flags > environment > config file > defaults.",
    )
    group.add_argument("--config", metavar="FILE", default=None,
                       help="TOML or YAML (.yaml/.yml) config file (default: $TIERD_CONFIG, else none)")
    for opt in _OPTIONS:
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.parse is _parse_bool:
            group.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None, help=help_text)


def load_config(
    args: argparse.Namespace | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """The Config from defaults < config file < environment < flags.

    `args` is a namespace from a parser given add_serve_arguments (attributes that are
    missing or None count as not given). `env` defaults to os.environ; tests pass a dict, and
    it is then also where XDG_RUNTIME_DIR / XDG_CACHE_HOME / HOME are read for defaults.
    `config_file`, when given, names the file instead of --config / TIERD_CONFIG.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path, path_where = _config_path(args, environ, config_file)
    if path is not None:
        base = os.path.dirname(os.path.abspath(path))
        for name, (raw, where) in _read_config_file(path, path_where).items():
            values[name] = _BY_NAME[name].parse(raw, where, base)
            sources[name] = where

    _check_env_names(environ)
    for opt in _OPTIONS:
        if opt.env in environ:
            values[opt.name] = opt.parse(environ[opt.env], opt.env, None)
            sources[opt.name] = opt.env

    if args is not None:
        for opt in _OPTIONS:
            raw = getattr(args, opt.name, None)
            if raw is not None:
                values[opt.name] = opt.parse(raw, opt.flag, None)
                sources[opt.name] = opt.flag

    if "socket" not in values:
        values["socket"] = default_socket_path(env=environ)
    if "dram" not in values:
        values["dram"] = default_dram_bytes()
    if "nvme_dir" not in values:
        values["nvme_dir"] = default_nvme_dir(env=environ)
    if "nvme" not in values:
        values["nvme"] = default_nvme_bytes(values["nvme_dir"])

    static = {f.name: f.default for f in dataclasses.fields(Config)}
    _check_watermarks(
        values.get("demote_low_watermark", static["demote_low_watermark"]),
        sources.get("demote_low_watermark", "the built-in default"),
        values.get("demote_high_watermark", static["demote_high_watermark"]),
        sources.get("demote_high_watermark", "the built-in default"),
    )
    return Config(**values)


def _config_path(
    args: argparse.Namespace | None, environ: Mapping[str, str], config_file: str | None
) -> tuple[str | None, str]:
    """The config file to read and which source named it (for error messages)."""
    if config_file is not None:
        return config_file, "config_file"
    flag = getattr(args, "config", None) if args is not None else None
    if flag is not None:
        return flag, "--config"
    if environ.get("TIERD_CONFIG"):  # set but empty means no file, as with an unset variable
        return environ["TIERD_CONFIG"], "TIERD_CONFIG"
    return None, ""


def _read_config_file(path: str, path_where: str) -> dict[str, tuple[object, str]]:
    """The file's options as {name: (raw value, where)}; raises ConfigError for a missing,
    unreadable or malformed file and for unknown keys."""
    is_yaml = path.lower().endswith((".yaml", ".yml"))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path_where}={path!r}: no such file; give the path of an existing TOML or YAML config file") from None
    except OSError as exc:
        raise ConfigError(f"{path_where}={path!r}: cannot read the config file ({exc.strerror}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8")
        if is_yaml:
            import yaml  # only needed for YAML files

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path!r} (from {path_where}) is not valid YAML: {exc}; fix the syntax there") from None
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path!r} (from {path_where}) is not valid TOML: {exc}; fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} (from {path_where}) is not UTF-8 text; save it as UTF-8") from None

    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} (from {path_where}): the top level must be a mapping of option names to values")
    prefix = ""
    if isinstance(data.get("tierd"), dict):
        outer = [k for k in data if k != "tierd"]
        if outer:
            raise ConfigError(
                f"config file {path!r}: keys {', '.join(map(repr, outer))} are outside the [tierd] table; "
                f"put every option under [tierd] (or none of them)"
            )
        data, prefix = data["tierd"], "tierd."

    unknown = [k for k in data if k not in _BY_NAME]
    if unknown:
        raise ConfigError(f"config file {path!r}: " + _unknown_message([f"{prefix}{k}" for k in unknown],
                                                                       [str(k) for k in unknown], list(_BY_NAME), "key"))
    return {k: (v, f"{path}: {prefix}{k}") for k, v in data.items()}


def _check_env_names(environ: Mapping[str, str]) -> None:
    valid = [opt.env for opt in _OPTIONS]
    allowed = set(valid) | NON_OPTION_ENV_VARS
    unknown = sorted(k for k in environ if k.startswith("TIERD_") and k not in allowed)
    if unknown:
        raise ConfigError(_unknown_message(unknown, unknown, sorted(allowed), "environment variable", strip="TIERD_"))


def _unknown_message(shown: list[str], names: list[str], valid: list[str], what: str, strip: str = "") -> str:
    """"unknown key 'dramm' (did you mean 'dram'?); valid keys are: ...". Suggestions compare
    names without the common `strip` prefix, which would otherwise make everything look close."""
    bare = {v[len(strip):]: v for v in valid}
    parts = []
    for label, name in zip(shown, names):
        close = difflib.get_close_matches(name[len(strip):], list(bare), n=1, cutoff=0.6)
        parts.append(f"{label!r}" + (f" (did you mean {bare[close[0]]!r}?)" if close else ""))
    plural = "s" if len(parts) > 1 else ""
    return f"unknown {what}{plural} {', '.join(parts)}; valid {what}s are: {', '.join(valid)}"
