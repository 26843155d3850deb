"""Reading the config file: TOML (tomllib) or, for names ending in .yaml/.yml, YAML (PyYAML).

The file holds options at the top level or all under one `[tierd]` table (so tierd's
settings can share a file with other tools'). Unknown keys are errors with a "did you mean",
and every error names the file and the source that named it. Values come back raw, with
where each came from; parsing them is the option table's job.
"""
from __future__ import annotations

import tomllib
from typing import Any, Callable

from tierd.config.options import BY_NAME, unknown_message
from tierd.errors import ConfigError


def read_config_file(path: str, path_where: str) -> dict[str, tuple[object, str]]:
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
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} (from {path_where}) is not UTF-8 text; save it as UTF-8") from None
    loads: Callable[[str], Any]
    syntax_error: type[Exception]
    if is_yaml:
        import yaml  # only needed for YAML files

        kind, loads, syntax_error = "YAML", yaml.safe_load, yaml.YAMLError
    else:
        kind, loads, syntax_error = "TOML", tomllib.loads, tomllib.TOMLDecodeError
    try:
        data = loads(text)
    except syntax_error as exc:
        raise ConfigError(f"config file {path!r} (from {path_where}) is not valid {kind}: {exc}; fix the syntax there") from None

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

    unknown = [k for k in data if k not in BY_NAME]
    if unknown:
        raise ConfigError(f"config file {path!r}: " + unknown_message([f"{prefix}{k}" for k in unknown],
                                                                      [str(k) for k in unknown], list(BY_NAME), "key"))
    return {k: (v, f"{path}: {prefix}{k}") for k, v in data.items()}
