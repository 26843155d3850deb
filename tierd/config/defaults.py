"""Machine-dependent defaults: the socket path, the NVMe directory and the DRAM and NVMe
capacities, computed from this machine and this user's environment.

They are computed only when no source sets the option (tierd.config.sources), and the NVMe
capacity looks at the filesystem of the *final* nvme_dir. Nothing here creates a directory or
a socket: loading a config has no side effects.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping

from tierd.config.parsers import MAX_SOCKET_PATH_BYTES
from tierd.sizes import GiB, MiB
from tierd.sockets import private_dir_name

#: Granularity and floor of the default DRAM capacity.
DRAM_GRANULE = 64 * MiB

#: The NVMe default never takes more than this, however large the disk.
NVME_DEFAULT_CAP = 64 * GiB


def _xdg_dir(env: Mapping[str, str], name: str) -> str | None:
    """An XDG base directory variable, if set to an absolute path (the spec says to ignore
    relative ones)."""
    value = env.get(name, "")
    return value if os.path.isabs(value) else None


def _private_dir(path: str) -> bool:
    """Whether `path` is a real directory (not a symlink) of this user that neither group nor
    others can write: a place no other user can put a socket of their own into."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def default_socket_path(*, env: Mapping[str, str] | None = None) -> str:
    """Where the daemon listens when no socket is configured, and where a client looks (both
    call this, so they agree).

    `$XDG_RUNTIME_DIR/tierd.sock` when that is a private directory of this user (as the XDG
    spec requires it to be: cleaned at logout), else `/tmp/tierd-<uid>/tierd.sock`. Never a
    name directly in /tmp, where any user could bind a socket of that name first and take
    clients' requests: the daemon creates `/tmp/tierd-<uid>` with mode 0700 and refuses it if
    another user made it first, or if it is a symlink or writable by others
    (`tierd.sockets.ensure_private_dir`). Does not read TIERD_SOCKET: that is an option, see
    load_config.
    """
    env = os.environ if env is None else env
    runtime = _xdg_dir(env, "XDG_RUNTIME_DIR")
    if runtime and _private_dir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        path = os.path.join(runtime, "tierd.sock")
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
            return path
    return os.path.join("/tmp", private_dir_name(), "tierd.sock")


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
