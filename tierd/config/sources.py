"""Where option values come from, and which wins: `load_config`.

Precedence, lowest to highest:

    built-in defaults  <  config file  <  TIERD_* environment variables  <  command-line flags

Each value is parsed where it is read, with its source as `where` (`TIERD_DRAM`, `--dram`,
`/etc/tierd.toml: dram`), so an error names the place to fix. The config file is named by
the `config_file` argument, else `--config`, else `TIERD_CONFIG`; there is no implicit file.
Unknown TIERD_* variables are errors, like unknown file keys. The machine-dependent defaults
are computed last, only for options no source set.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping

from tierd.config.defaults import default_dram_bytes, default_nvme_bytes, default_nvme_dir, default_socket_path
from tierd.config.files import read_config_file
from tierd.config.options import BY_NAME, OPTIONS, unknown_message
from tierd.config.settings import Config, check_watermarks
from tierd.errors import ConfigError

#: Environment variables with the TIERD_ prefix that are not options. Every other TIERD_*
#: variable must name an option; add here any that another part of tierd reads itself.
NON_OPTION_ENV_VARS: frozenset[str] = frozenset({"TIERD_CONFIG"})


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
        for name, (raw, where) in read_config_file(path, path_where).items():
            values[name] = BY_NAME[name].parse(raw, where, base)
            sources[name] = where

    _check_env_names(environ)
    for opt in OPTIONS:
        if opt.env in environ:
            values[opt.name] = opt.parse(environ[opt.env], opt.env, None)
            sources[opt.name] = opt.env

    if args is not None:
        for opt in OPTIONS:
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
    check_watermarks(
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


def _check_env_names(environ: Mapping[str, str]) -> None:
    valid = [opt.env for opt in OPTIONS]
    allowed = set(valid) | NON_OPTION_ENV_VARS
    unknown = sorted(k for k in environ if k.startswith("TIERD_") and k not in allowed)
    if unknown:
        raise ConfigError(unknown_message(unknown, unknown, sorted(allowed), "environment variable", strip="TIERD_"))
