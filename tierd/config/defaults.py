"""Machine-dependent defaults: the socket path, the NVMe directory and the DRAM and NVMe
capacities, computed from this machine and this user's environment.

They are computed only when no source sets the option (tierd.config.sources), and the NVMe
capacity looks at the filesystem of the *final* nvme_dir. Nothing here creates a directory or
a socket: loading a config has no side effects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from tierd.config.parsers import MAX_SOCKET_PATH_BYTES
from tierd.sizes import GiB, MiB

#: Granularity and floor of the default DRAM capacity.
DRAM_GRANULE = 64 * MiB

#: The NVMe default never takes more than this, however large the disk.
NVME_DEFAULT_CAP = 64 * GiB


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
