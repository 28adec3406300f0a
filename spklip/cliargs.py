"""Typed ``argparse`` values for every numeric flag of every spklip command (``type=positive_int`` ...).

A flag outside the config gets the same rigour as a config key: an integer flag takes only integers in its range,
a float flag only finite numbers in its range (NaN and the infinities are out of every range), so ``--planes 0``,
``--shard-mb nan`` or ``--seed -1`` stop at parsing with one line naming the flag, exit 2, before anything runs.
argparse adds the flag's name: ``spklip: error: argument --planes: must be an integer >= 1, got '0'``.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from spklip.config.train import RUN_NAME_MAX_BYTES

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and many generators take 32-bit seeds
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+,@-]*")  # a run or sweep name (`check_name`)


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (either bound optional)."""
    if low is not None and high is not None:
        what = f"an integer in [{low}, {high}]"
    elif low is not None:
        what = f"an integer >= {low}"
    else:
        what = f"an integer <= {high}" if high is not None else "an integer"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the range (``low_open``/``high_open`` make a bound strict)."""
    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        what = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        ok = (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1)  # counts, sizes, strides: 0 would mean nothing (or silently "the default")
nonneg_int = int_range(0)  # offsets, optional extras where 0 means "none"
seed_int = int_range(0, SEED_MAX)  # --seed: what numpy and torch accept everywhere
positive_float = float_range(0.0, low_open=True)
nonneg_float = float_range(0.0)
fraction = float_range(0.0, 1.0)  # a probability or share in [0, 1]


def bounded_str(max_len: int, what: str = "value") -> Callable[[str], str]:
    """An argparse type: a non-empty string of at most `max_len` characters."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        if len(text) > max_len:
            raise argparse.ArgumentTypeError(f"{what} must be at most {max_len} characters, got {len(text)}")
        return text

    parse.__name__ = "str"
    return parse


def check_name(name: str, what: str = "--name", max_len: int = RUN_NAME_MAX_BYTES) -> str:
    """`name` if it is one plain folder name, else ValueError (one line, naming `what`): not empty, letters, digits
    and ``. _ - = + , @`` only (ASCII: characters are bytes), not starting with ``.`` or ``-``, no ``..``, no ``/``,
    at most `max_len` characters. The one check of a run or sweep name: ``--name`` (`folder_name`, at parsing),
    ``tracking.run_name`` and names given to `spklip.runtime.launcher.prepare_run` (re-exported by
    `spklip.train.ownership`)."""
    shown = name if len(name) <= 40 else name[:40] + "..."
    if not name:
        raise ValueError(f"{what}: the name is empty")
    if len(name) > max_len:
        raise ValueError(f"{what} {shown!r}: the name has {len(name)} characters, at most {max_len} are allowed")
    if ".." in name or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {shown!r}: a name is one folder name: letters, digits and . _ - = + , @ "
                         "(no '/', no '..', not starting with '.' or '-')")
    return name


def folder_name(max_bytes: int = RUN_NAME_MAX_BYTES, what: str = "a name") -> Callable[[str], str]:
    """An argparse type: a name that becomes one folder (``--name``), held to `check_name` (`max_bytes`: its
    length limit; ASCII only, so characters are bytes)."""

    def parse(text: str) -> str:
        try:
            return check_name(text, what, max_bytes)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "name"
    return parse


def csv_of(item: Callable[[str], object]) -> Callable[[str], tuple]:
    """An argparse type: a comma-separated list, each item parsed by `item` (e.g. ``int_range(0, 9)``)."""

    def parse(text: str) -> tuple:
        out = []
        for part in text.split(","):
            if part.strip():
                try:
                    out.append(item(part.strip()))
                except argparse.ArgumentTypeError as e:
                    raise argparse.ArgumentTypeError(f"item {part.strip()!r}: {e}") from None
                except ValueError:
                    raise argparse.ArgumentTypeError(f"invalid item {part.strip()!r}") from None
        return tuple(out)

    parse.__name__ = "list"
    return parse
