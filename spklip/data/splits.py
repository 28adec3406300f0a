"""Split assignment shared by the dataset builders: held-out (unseen) classes and per-class train/val/test clips.

Folder datasets split without leakage (docs/data.md, "Splits without leakage"): a clip's group key comes from its
file name (`group_key`, ``--group-by``), every clip of a group gets one split (`assign_group_splits`), and official
split lists (UCF101 ``trainlist0N.txt`` / ``testlist0N.txt``, HMDB51 ``<class>_test_splitN.txt``) are read by
`read_split_lists`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# UCF101 ``v_ApplyEyeMakeup_g08_c01.avi`` -> ``g08`` (the group: one actor/scene, clips c01...); HMDB51
# ``April_09_brush_hair_u_nm_np1_ba_goo_0.avi`` -> ``April_09_brush_hair`` (the source video: the name before its
# tags <body part>_<camera motion>_<people>_<viewpoint>_<quality>_<clip index>).
DEFAULT_GROUP_BY = (r"(?:^|_)(g\d+)_c\d+\."
                    r"|^(.+?)_[fhul]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+\.")
NO_GROUPS = "none"  # --group-by none: the old per-clip random split
UCF_LIST = re.compile(r"^(train|test)list(\d+)\.txt$", re.IGNORECASE)  # UCF101 trainlist01.txt / testlist01.txt
HMDB_LIST = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.IGNORECASE)  # HMDB51 brush_hair_test_split1.txt
LIST_IGNORED = ("classind.txt",)  # UCF101's class index, in the same folder as the lists: not a split list
HMDB_MARKS = {"0": "unused", "1": "train", "2": "test"}


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


def compile_group_by(text: str | None) -> re.Pattern | None:
    """``--group-by``: a compiled regex, or None for per-clip splits (None or ``none``).

    Raises:
        ValueError: naming the flag, when `text` is not a regular expression.
    """
    if text is None or text.strip().lower() == NO_GROUPS:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"--group-by {text!r} is not a regular expression ({e})") from e


def group_key(name: str, pattern: re.Pattern) -> str | None:
    """The group of a clip file `name` (``v_X_g08_c01.avi`` -> ``g08``): the first group of `pattern` that took
    part in its first match, else the whole match; None when `pattern` does not match."""
    m = pattern.search(name)
    if m is None:
        return None
    return next((g for g in m.groups() if g is not None), m.group(0))


def group_keys(names: Sequence[str], pattern: re.Pattern) -> list[str]:
    """One key per clip name; a name `pattern` does not match is a group of its own (keyed by the name)."""
    return [key if (key := group_key(n, pattern)) is not None else "\0" + n for n in names]


def _key_order(keys: Iterable[str], seed: int) -> list[str]:
    """The distinct keys in an order fixed by (seed, key) alone: classes that share keys (UCF101's g01..g25, one
    object's instances) take them in the same order."""
    def rank(key: str) -> bytes:
        return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()

    return sorted(set(keys), key=rank)


def assign_group_splits(keys: Sequence[str], val_frac: float, test_frac: float, seed: int) -> list[str]:
    """A split name for each clip of one seen class, given its group key: every clip of a group gets the group's
    split, so no group is in two splits.

    Groups are taken in an order fixed by ``(seed, key)`` (`_key_order`); each goes to whichever of test and val is
    further below its share of the clips (`split_counts`), if that share still wants at least half the group, else
    to train. So the fractions are met to within about half a group, at least one group stays in train, and
    classes with the same keys and group sizes get the same assignment.
    """
    _, n_val, n_test = split_counts(len(keys), val_frac, test_frac)
    sizes = Counter(keys)
    need = {"test": n_test, "val": n_val}
    split_of: dict[str, str] = {}
    for key in _key_order(keys, seed):
        split = max(need, key=need.get)  # the split furthest below its share (test on a tie)
        if need[split] > 0 and 2 * need[split] >= sizes[key]:
            need[split] -= sizes[key]
        else:
            split = "train"
        split_of[key] = split
    if "train" not in split_of.values():  # rounding gave every group away: the last one taken goes back
        split_of[key] = "train"
    return [split_of[k] for k in keys]


@dataclass(frozen=True)
class SplitLists:
    """Official split lists read by `read_split_lists`."""

    marks: dict[tuple[str, str], str]  # (class folder, lower case; clip file name) -> "train" | "test" | "unused"
    files: tuple[str, ...]  # the list files read, absolute
    number: int  # the split they are (UCF101 0N, HMDB51 splitN)

    def mark(self, folder: str, name: str) -> str | None:
        """What the lists say about clip `name` of class folder `folder` (None: listed nowhere)."""
        return self.marks.get((folder.lower(), name))


def _list_format(path: Path) -> tuple[str, int]:
    """``("ucf-train" | "ucf-test" | "hmdb", split number)`` from a list file's name.

    Raises:
        ValueError: naming the file, when its name is no known split list.
    """
    if m := UCF_LIST.match(path.name):
        return f"ucf-{m.group(1).lower()}", int(m.group(2))
    if m := HMDB_LIST.match(path.name):
        return "hmdb", int(m.group(2))
    raise ValueError(f"--split-file {path}: unknown split file format (expected UCF101 trainlistNN.txt / "
                     "testlistNN.txt or HMDB51 <class>_test_splitN.txt)")


def split_list_files(paths: Sequence[str | os.PathLike], number: int) -> list[Path]:
    """The list files ``--split-file`` names: each file as given; from a folder, the lists of split `number`
    (``classInd.txt`` and hidden files are passed over; any other file must be a split list).

    Raises:
        FileNotFoundError / ValueError: naming the path: it does not exist, a file of unknown format, a folder
            without lists of split `number`.
    """
    if number < 1:
        raise ValueError(f"--split-number must be >= 1, got {number}")
    chosen: list[Path] = []
    for given in paths:
        path = Path(given).expanduser().absolute()
        if not path.exists():
            raise FileNotFoundError(f"--split-file {path} does not exist")
        if not path.is_dir():
            _list_format(path)
            chosen.append(path)
            continue
        files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")
                 and f.name.lower() not in LIST_IGNORED]
        mine = [f for f in files if _list_format(f)[1] == number]
        if not mine:
            raise ValueError(f"--split-file {path}: no split lists of split {number} (--split-number)")
        chosen += mine
    return chosen


def _list_entry(parts: list[str], fmt: str, hmdb_class: str) -> tuple[tuple[str, str], str] | None:
    """The ``((class folder lower, file), mark)`` of one line's fields, or None when they do not fit `fmt`."""
    if fmt == "hmdb":
        ok = len(parts) == 2 and parts[1] in HMDB_MARKS and "/" not in parts[0]
        return ((hmdb_class, parts[0]), HMDB_MARKS[parts[1]]) if ok else None
    label_ok = len(parts) == 1 or (len(parts) == 2 and parts[1].isdigit())  # trainlist: an optional class index
    if not label_ok or parts[0].count("/") != 1 or not all(parts[0].split("/")):
        return None
    folder, name = parts[0].split("/")
    return (folder.lower(), name), fmt.removeprefix("ucf-")


def _read_list(path: Path, fmt: str) -> Iterable[tuple[tuple[str, str], str, int]]:
    """``((class folder lower, file), mark, line number)`` for every entry of one list file."""
    hmdb_class = HMDB_LIST.match(path.name).group(1).lower() if fmt == "hmdb" else ""
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        entry = _list_entry(parts, fmt, hmdb_class)
        if entry is None:
            want = "'<video> <0|1|2>'" if fmt == "hmdb" else "'<class>/<video>'" + " [label]" * (fmt == "ucf-train")
            raise ValueError(f"--split-file {path}, line {number}: {line.strip()[:80]!r} is not a {want} line")
        yield (*entry, number)


def read_split_lists(paths: Sequence[str | os.PathLike], number: int = 1) -> SplitLists:
    """Read official split lists (files, or folders: see `split_list_files`).

    UCF101: ``trainlist0N.txt`` lines ``ClassName/v_X_gNN_cMM.avi [label]``, ``testlist0N.txt`` lines
    ``ClassName/v_X_gNN_cMM.avi`` (both needed). HMDB51: per class ``<class>_test_splitN.txt`` lines
    ``<video>.avi <0|1|2>`` (1 train, 2 test, 0 unused).

    Raises:
        ValueError: naming the file (and line): an unknown format, a malformed line, lists of different splits,
            UCF101 lists without both a train and a test list, a clip listed with two different marks.
    """
    files = split_list_files(paths, number)
    formats = {f: _list_format(f) for f in files}
    numbers = sorted({n for _, n in formats.values()})
    if len(numbers) > 1:
        raise ValueError(f"--split-file: the lists are of different splits ({', '.join(map(str, numbers))}); "
                         "pass one split's lists")
    kinds = {k for k, _ in formats.values()}
    if kinds & {"ucf-train", "ucf-test"} and not {"ucf-train", "ucf-test"} <= kinds:
        raise ValueError(f"--split-file {files[0]}: UCF101 needs both trainlist{numbers[0]:02d}.txt and "
                         f"testlist{numbers[0]:02d}.txt")
    marks: dict[tuple[str, str], str] = {}
    for path, (fmt, _) in formats.items():
        for key, mark, line in _read_list(path, fmt):
            if marks.setdefault(key, mark) != mark:
                raise ValueError(f"--split-file {path}, line {line}: {key[0]}/{key[1]} is listed as both "
                                 f"{marks[key]} and {mark}")
    return SplitLists(marks, tuple(str(f) for f in files), numbers[0])


def describe_split_method(builder: dict, kind: str = "") -> str:
    """One line for ``data inspect``: how the splits of a dataset of `kind` with this manifest ``builder`` were
    made."""
    record = builder.get("splits")
    if not isinstance(record, dict) and kind == "moving-digits":  # `moving_digits._pools`, fixed by the builder
        return ("per clip, seeded; each split draws its handwriting from its own 60/20/20 pool of the source's "
                "images (unseen classes from the test pool)")
    if not isinstance(record, dict):
        return "per clip, seeded (not recorded in the manifest)"
    if record.get("method") == "random":
        return "random per clip (--group-by none)"
    groups = record.get("groups") or {}
    counted = ", ".join(f"{s} {groups[s]}" for s in ("train", "val", "test") if s in groups)
    regex = record.get("group_by")
    by = ("group by the default --group-by (UCF101 _gNN_, HMDB51 source video)" if regex == DEFAULT_GROUP_BY else
          f"group by --group-by '{regex}'") + (f" ({counted} groups)" if counted else "")
    if record.get("method") == "group":
        return by
    files = ", ".join(Path(f).name for f in record.get("split_files", []))
    left = [f"{record[k]} {k}" for k in ("unlisted", "unused", "missing") if record.get(k)]
    val = by if record.get("group_by") else "per clip"
    return (f"split files {files} (split {record.get('split_number')}); val from the training clips, {val}"
            + (f"; left out: {', '.join(left)}" if left else ""))


def leaking_groups(clips: Iterable[tuple[str, str]], pattern: str = DEFAULT_GROUP_BY) -> tuple[int, int, int]:
    """``(clips whose name carries a group, groups, groups with clips in more than one split)`` over ``(clip_id,
    split)`` pairs of the seen splits; a clip id is ``<class folder>/<file>`` (groups are per class)."""
    regex = re.compile(pattern)
    splits_of: dict[tuple[str, str], set[str]] = {}
    grouped = 0
    for clip_id, split in clips:
        folder, _, name = clip_id.rpartition("/")
        key = group_key(name, regex)
        if key is not None:
            grouped += 1
            splits_of.setdefault((folder, key), set()).add(split)
    return grouped, len(splits_of), sum(len(s) > 1 for s in splits_of.values())
