"""The command-line side: one `tierd serve` flag per option, plus --config.

Flags only collect strings; tierd.config.sources validates them with the same parsers as the
file and the environment, so a bad flag gives the same ConfigError as a bad key or variable.
"""
from __future__ import annotations

import argparse

from tierd.config.options import OPTIONS
from tierd.config.parsers import parse_bool


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
    for opt in OPTIONS:
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.parse is parse_bool:
            group.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(opt.flag, dest=opt.name, metavar=opt.metavar, default=None, help=help_text)
