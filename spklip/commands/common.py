"""Command-line pieces shared by the spklip commands (and the sweep scripts' parser, spklip/tune/cli.py).

Imports nothing from spklip, so any parser can use it without pulling in the command modules.
"""

from __future__ import annotations

import argparse

SET_HELP = "dotted config override, repeatable (e.g. --set train.epochs=3)"


def add_set_flag(parser: argparse.ArgumentParser, help: str = SET_HELP, dest: str = "set") -> None:
    """Add the repeatable ``--set KEY=VALUE`` flag; the raw strings land in ``args.<dest>`` (parse them with
    `spklip.config.parse_overrides` or hand them to `spklip.config.load_config`)."""
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help)
