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

Where each part lives:

    options.py   the option table: name, parser, placeholder, help of every option
    settings.py  Config, the frozen settings with their static defaults
    parsers.py   value parsers: paths, sizes, durations, URLs, codecs, quotas, modes, ...
    users.py     who may connect (allow_uids) and user-to-namespace bindings
    defaults.py  machine-dependent defaults: socket path, NVMe dir, DRAM and NVMe capacity
    files.py     reading a TOML or YAML config file
    flags.py     the `tierd serve` flags
    sources.py   load_config: the four sources in order of precedence

Loading has no side effects: it creates no directory and no socket. This package re-exports
the public names, so `from tierd.config import Config, load_config` is the way in.
"""
from __future__ import annotations

from tierd.config.defaults import (
    DRAM_GRANULE,
    NVME_DEFAULT_CAP,
    default_dram_bytes,
    default_nvme_bytes,
    default_nvme_dir,
    default_socket_path,
)
from tierd.config.flags import add_serve_arguments
from tierd.config.parsers import LOG_LEVELS, MAX_SOCKET_PATH_BYTES, parse_object_url
from tierd.config.settings import Config
from tierd.config.sources import NON_OPTION_ENV_VARS, load_config
from tierd.config.users import MAX_UID

__all__ = [
    "Config",
    "DRAM_GRANULE",
    "LOG_LEVELS",
    "MAX_SOCKET_PATH_BYTES",
    "MAX_UID",
    "NON_OPTION_ENV_VARS",
    "NVME_DEFAULT_CAP",
    "add_serve_arguments",
    "default_dram_bytes",
    "default_nvme_bytes",
    "default_nvme_dir",
    "default_socket_path",
    "load_config",
    "parse_object_url",
]
