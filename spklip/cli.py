"""`spklip` command line: ``spklip <group> <command> ...``. ``main(argv)`` is callable from tests.

Each command group lives in its own module under spklip/commands/ and exposes ``register(subparsers)``; handlers
receive the parsed ``argparse.Namespace`` and return an exit code. Heavy imports (torch, ray) happen inside the
handlers so that ``spklip --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spklip.config import ConfigError

COMMAND_MODULES = [
    "spklip.commands.data",  # data simulate | build | inspect
    "spklip.commands.train",  # train | eval
    "spklip.commands.sweep",  # sweep NAME | report --experiment NAME
    "spklip.commands.model",  # models | energy --model NAME
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spklip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # User errors (bad config key, missing file, malformed input) get one clear line, not a traceback.
        print(f"spklip: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
