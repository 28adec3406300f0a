"""Split assignment shared by the dataset builders: held-out (unseen) classes and per-class train/val/test clips."""

from __future__ import annotations

import math
import re

import numpy as np


def clip_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one clip, derived from the dataset seed and the clip's keys (independent of build order)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def split_counts(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    """Clips of one seen class -> (train, val, test) counts; rounding, with at least one training clip."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise ValueError(f"val/test fractions must be >= 0 with a sum below 1, got {val_frac}, {test_frac}")
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    if n_val + n_test >= n:
        raise ValueError(f"{n} clips per class leave no training clip with val_frac={val_frac}, "
                         f"test_frac={test_frac}; use more clips per class or smaller fractions")
    return n - n_val - n_test, n_val, n_test


def empty_split_warning(what: str, n: int, val_frac: float, test_frac: float) -> str | None:
    """The warning for `what` (``class 'jump'``) whose ``n`` clips leave val or test empty although its fraction is
    above 0, else None."""
    _, n_val, n_test = split_counts(n, val_frac, test_frac)
    empty = [s for s, k, frac in (("val", n_val, val_frac), ("test", n_test, test_frac)) if frac > 0 and k == 0]
    if not empty:
        return None
    return (f"{what} has {n} clip{'s' * (n != 1)}: its {' and '.join(empty)} split{'s' * (len(empty) > 1)} "
            "will be empty")


def assign_splits(n: int, val_frac: float, test_frac: float, rng: np.random.Generator) -> list[str]:
    """A seeded random split name for each of the ``n`` clips of one seen class."""
    n_train, n_val, n_test = split_counts(n, val_frac, test_frac)
    names = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    return names[rng.permutation(n)].tolist()


def choose_unseen_pairs(rows: int, cols: int, count: int, seed: int) -> list[tuple[int, int]]:
    """Pick ``count`` cells of a rows x cols class grid (digit x motion) to hold out, spread so that every row and
    every column keeps seen cells (what compositional zero-shot needs): at most ceil(count/rows) per row and
    ceil(count/cols) per column."""
    if not 0 <= count < rows * cols:
        raise ValueError(f"cannot hold out {count} of {rows * cols} classes (at least one class must be seen)")
    rng = np.random.default_rng([seed, 7919])
    cap_r, cap_c = math.ceil(count / rows), math.ceil(count / cols)
    per_r, per_c, chosen = [0] * rows, [0] * cols, []
    for flat in rng.permutation(rows * cols):
        r, c = divmod(int(flat), cols)
        if len(chosen) < count and per_r[r] < cap_r and per_c[c] < cap_c:
            chosen.append((r, c))
            per_r[r] += 1
            per_c[c] += 1
    return sorted(chosen)


def choose_unseen_classes(names: list[str], count: int, explicit: list[str] | None, seed: int) -> set[int]:
    """Held-out class indices: the ``explicit`` names if given, else ``count`` classes drawn with ``seed``.

    An explicit name is a folder name (``bag_moves_up``) or the class name ``data inspect`` shows (``bag moves up``).
    """
    if explicit:
        index = {**{humanize(n): i for i, n in enumerate(names)}, **{n: i for i, n in enumerate(names)}}
        unknown = [n for n in explicit if n not in index and humanize(n) not in index]
        if unknown:
            raise ValueError(f"unseen classes {unknown} are not class folders (classes: {', '.join(names)})")
        return {index.get(n, index.get(humanize(n))) for n in explicit}
    if not 0 <= count < len(names):
        raise ValueError(f"cannot hold out {count} of {len(names)} classes (at least one class must be seen)")
    return set(np.random.default_rng([seed, 104729]).permutation(len(names))[:count].tolist())


def humanize(name: str) -> str:
    """A folder name as words: ``ApplyEyeMakeup`` -> ``apply eye makeup``, ``brush_hair`` -> ``brush hair``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|[_\-]+", " ", name)
    return re.sub(r"\s+", " ", spaced).strip().lower()
