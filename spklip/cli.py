"""`spklip` command line: ``spklip <group> <command> ...``. ``main(argv)`` is callable from tests.

Each command group lives in its own module under spklip/commands/ and exposes ``register(subparsers)``; handlers
receive the parsed ``argparse.Namespace`` and return an exit code. Heavy imports (torch, ray) happen inside the
handlers so that ``spklip --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
import typing

from spklip.config import ConfigError
from spklip.runtime.tracking.store import redact_text  # plain Python: no MLflow

COMMAND_MODULES = [
    "spklip.commands.data",  # data simulate | build | inspect
    "spklip.commands.train",  # train | eval
    "spklip.commands.sweep",  # sweep NAME | report --experiment NAME
    "spklip.commands.model",  # models | energy --model NAME
    "spklip.commands.tracking",  # tracking sync RUN_DIR
]
DEBUG_ENV = "SPKLIP_DEBUG"  # SPKLIP_DEBUG=1 does what --debug does
SIGPIPE_EXIT = 128 + 13  # what a shell reports for a process ended by SIGPIPE (`spklip ... | head`)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other spklip error (exit 2): the flag and what is wrong,
    then where the usage is (``--help``); sub-command parsers inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"spklip: error: {message} (usage: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="spklip", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help=f"print the full traceback of an error (also {DEBUG_ENV}=1); accepted anywhere")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error reaches the user as one line naming the file or key (exit 2; Ctrl-C: 130);
    ``--debug`` or ``SPKLIP_DEBUG=1`` prints the traceback above that line."""
    started = time.time()
    if argv is None:  # the process's own command: count from the process's start (interpreter and imports included)
        from spklip.train.timing import process_started_at  # plain Python, no torch

        started = process_started_at() or started
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)  # what follows "--" belongs to the command
    debug = "--debug" in argv[:end] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for i, a in enumerate(argv) if i >= end or a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # `spklip --help | head -1`
        _silence_stdout()
        return SIGPIPE_EXIT
    args.started_at = started  # handlers that time their start-up count from here (`spklip train`)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a reader that went away (`| head`) is found here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `spklip data inspect DIR | head -3`: the reader is gone; stop quietly, as Unix tools do
        _silence_stdout()
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("spklip: interrupted", file=sys.stderr)  # what was being written has been removed
        return 130
    except Exception as e:  # noqa: BLE001 - the whole point: no traceback for the user unless asked for
        if debug:
            traceback.print_exc()
        print(f"spklip: error: {error_line(e, args, hint=not debug)}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush into the closed pipe prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture): nothing to flush
        pass


def error_line(e: BaseException, args: argparse.Namespace | None = None, hint: bool = False) -> str:
    """One line for `e`: the file, line and column of a YAML syntax error; else the first line of its message,
    prefixed by its type unless it is an error spklip words for the user (ConfigError, ValueError, OSError).
    `hint` appends how to see the traceback to errors of other types (unexpected ones)."""
    import yaml

    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark  # spklip reads YAML from a string, so the mark names no file: --config is the one
        name = mark.name if mark.name and not mark.name.startswith("<") else getattr(args, "config", None) or "YAML"
        what = e.problem or "invalid YAML"
        if e.context and e.context_mark is not None:  # where the construct that broke began
            what += f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
        return f"{name}: YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {what}"
    lines = [line.strip() for line in redact_text(str(e)).strip().splitlines() if line.strip()]  # no password
    text = lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""
    if isinstance(e, (ConfigError, ValueError, OSError)) and text:
        return text
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text + (f" (--debug or {DEBUG_ENV}=1 shows the traceback)" if hint else "")


if __name__ == "__main__":
    sys.exit(main())
