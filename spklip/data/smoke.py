"""The smoke-test dataset: a tiny moving-digits build (3 digits x 3 motions x 6 clips = 54 clips: 6 seen classes with
train 24, val 6, test 6; 3 unseen classes of 6, one per digit and motion, so zero-shot ranks 3 classes, chance 1/3),
in the clip shape of a model preset, built in ~8 s on first use so that a smoke
sweep or test runs on a fresh machine. Built through `spklip.data.build`, like ``spklip data build moving-digits``
with `SMOKE_FLAGS` (same clips, same fingerprint).
"""

from __future__ import annotations

import os
from pathlib import Path

from spklip.data.build import build_dataset, has_shards, preset_clip_shape
from spklip.data.moving_digits import DigitsSpec
from spklip.data.storage import is_uri
from spklip.data.simulate import SimParams

SMOKE_DIGITS = (0, 1, 2)
SMOKE_MOTIONS = ("left", "right", "up")
SMOKE_CLIPS_PER_CLASS = 6
SMOKE_UNSEEN = 3  # zero-/few-shot need >= 2 unseen classes (spklip.eval.evaluate.MIN_UNSEEN_CLASSES)
SMOKE_SEED = 0
# the same dataset from the command line: spklip data build moving-digits --out DIR --model PRESET SMOKE_FLAGS
SMOKE_FLAGS = ("--digits", ",".join(map(str, SMOKE_DIGITS)), "--motions", ",".join(SMOKE_MOTIONS),
               "--clips-per-class", str(SMOKE_CLIPS_PER_CLASS), "--unseen-classes", str(SMOKE_UNSEEN),
               "--seed", str(SMOKE_SEED))


def smoke_spec(preset: str = "spklip-tiny") -> DigitsSpec:
    """The smoke dataset's moving-digits spec, at the clip shape of model `preset`."""
    n, h, w = preset_clip_shape(preset)
    return DigitsSpec(num_planes=n, height=h, width=w, digits=SMOKE_DIGITS, motions=SMOKE_MOTIONS,
                      clips_per_class=SMOKE_CLIPS_PER_CLASS, unseen_classes=SMOKE_UNSEEN, seed=SMOKE_SEED)


def build_smoke_data(out: str | os.PathLike, preset: str = "spklip-tiny") -> Path:
    """Build the smoke dataset into the new folder `out` (refused if it exists) and return ``Path(out)``."""
    build_dataset(out, "moving-digits", smoke_spec(preset), SimParams(seed=SMOKE_SEED))
    return Path(out)


def ensure_smoke_data(path: str | os.PathLike, run_dir: str | os.PathLike,
                      preset: str = "spklip-tiny") -> Path | str:
    """`path` if it holds shards (a URI stays a string); else ``<run_dir>/data/smoke-digits``, built there first
    unless it already is."""
    if has_shards(path):
        return path if is_uri(path) else Path(path)
    out = Path(run_dir) / "data" / "smoke-digits"
    if not has_shards(out):
        build_smoke_data(out, preset)
    return out
