"""Building a spike shard dataset: a builder's spec -> clips -> Parquet shards, the one path that ``spklip data
build``, the smoke-test data (`spklip.data.smoke`) and the test fixtures all take.

`plan_dataset` lists (and checks) the inputs of ``kind`` and splits the work into parts a worker makes alone (a
moving-digits class, one video, one recording); `build_dataset` checks the output folder before a single clip is
made (refuse early, delete nothing), maps the parts with the mapper it is given (in this process, or a Ray Data
pipeline: `spklip.runtime.parallel`), packs each clip into its shard row where the part is made (`part_rows`:
`shards.clip_row` checks, bit-packs and hashes it), and streams the rows in build order through `write_rows`, which
writes into a hidden sibling folder and renames it into place when complete (docs/data.md, "What `--out` may
replace").
Every clip's randomness comes from its own seed: the same dataset (fingerprint, shard files) whatever the
parallelism.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from spklip.config import load_config
from spklip.data import storage
from spklip.data.folders import FolderSpec, UnreadableInputs, dat_clip, folder_plan, video_clip
from spklip.data.moving_digits import DigitsSpec, digit_class_clips, digit_clips
from spklip.data.parallel import Mapper, serial_map
from spklip.data.shards import Clip, DatasetInfo, Row, check_out_dir, clip_row, write_rows
from spklip.data.simulate import SimParams

KINDS = ("moving-digits", "video-folder", "dat-folder")


@dataclass
class BuildPlan:
    """What a build makes, in parts a worker can make alone, in build order."""

    info: DatasetInfo  # the header (and the inputs left out, `info.skipped`)
    parts: list[Any]  # picklable work items: a moving-digits label, a `folders.FolderItem`
    make: Callable[[Any], Iterable[Clip]]  # one part -> its clips (a module function with its arguments bound)
    total: int  # clips over all parts
    notes: list[str]  # warnings for the user (a folder class whose val/test split is empty)


def preset_clip_shape(preset: str) -> tuple[int, int, int]:
    """``(N, H, W)``: the clip shape model `preset` is built for, so data and model agree."""
    cfg = load_config(overrides={"model_preset": preset}).model
    return cfg.num_planes, cfg.height, cfg.width


def plan_dataset(kind: str, spec: DigitsSpec | FolderSpec, sim: SimParams | None, *, skip_bad: bool = False,
                 pmap: Mapper = serial_map, chunk_planes: int | None = None) -> BuildPlan:
    """The plan of builder `kind` (one of `KINDS`): ``moving-digits`` takes a `DigitsSpec`, ``video-folder`` and
    ``dat-folder`` a `FolderSpec`; `sim` is the simulator (None for ``dat-folder``: real recordings are not
    simulated); `chunk_planes` bounds the simulator's memory for videos (`simulate_spikes`; the bits do not depend on
    it). Folder inputs are all checked first (`folders.check_inputs`, mapped with `pmap`): a bad one is an error
    listing every bad one, or with `skip_bad` left out and listed in ``info.skipped``."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    want = DigitsSpec if kind == "moving-digits" else FolderSpec
    if not isinstance(spec, want):
        raise TypeError(f"{kind} is built from a {want.__name__}, got {type(spec).__name__}")
    if kind == "moving-digits":
        info, _, total = digit_clips(spec, sim)  # the header only: its clip iterator is lazy and left unused
        make = functools.partial(digit_class_clips, spec, sim, info)
        return BuildPlan(info, list(range(len(spec.class_pairs))), make, total, [])
    plan = folder_plan(spec, kind, sim, skip_bad=skip_bad, pmap=pmap)
    make = (functools.partial(video_clip, spec, sim, plan.info, chunk_planes=chunk_planes) if kind == "video-folder" else
            functools.partial(dat_clip, spec, plan.info))
    return BuildPlan(plan.info, plan.items, make, len(plan.items), plan.notes)


def part_rows(make: Callable[[Any], Iterable[Clip]], info: DatasetInfo, part: Any) -> Iterator[Row]:
    """The shard rows of one part: its clips made and packed (`shards.clip_row`: checked, bit-packed, hashed)
    where the part runs, a Ray worker in a parallel build, so the driver only appends rows and writes files."""
    for clip in make(part):
        yield clip_row(clip, info)


def dataset_clips(kind: str, spec: DigitsSpec | FolderSpec, sim: SimParams | None,
                  chunk_planes: int | None = None) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator (in this process) and the clip count of builder `kind` (see `plan_dataset`)."""
    plan = plan_dataset(kind, spec, sim, chunk_planes=chunk_planes)
    return plan.info, serial_map(plan.make, plan.parts), plan.total


def build_dataset(out: str | os.PathLike, kind: str, spec: DigitsSpec | FolderSpec, sim: SimParams | None = None,
                  *, overwrite: bool = False, shard_mb: float = 64.0, progress: bool = False, skip_bad: bool = False,
                  pmap: Mapper = serial_map, chunk_planes: int | None = None) -> dict[str, Any]:
    """Build the `kind` dataset `spec` describes into the folder `out` and return its metadata (`read_metadata`).

    Args:
        out: the dataset folder; refused unless absent or (with `overwrite`) empty or a spklip dataset.
        kind, spec, sim: see `plan_dataset`.
        overwrite: replace an existing spklip dataset, only once the new one is complete.
        shard_mb: a split's Parquet file is closed at this many MB of packed spikes.
        progress: show a tqdm bar over the clips.
        skip_bad: leave out the inputs that cannot be read (listed in the manifest) instead of refusing.
        pmap: how the checks and the clips are mapped over the parts: in this process (`serial_map`), or a Ray Data
            pipeline (``with spklip.runtime.parallel.ray_mapper(workers=...) as pmap``). Same dataset either way.
        chunk_planes: spike planes the simulator holds at once (see `plan_dataset`).

    What was skipped (and why) and warnings are printed on stderr, one line each.
    """
    check_out_dir(out, overwrite)  # before any clip is made: refuse early, delete nothing
    try:
        plan = plan_dataset(kind, spec, sim, skip_bad=skip_bad, pmap=pmap, chunk_planes=chunk_planes)
    except UnreadableInputs as e:  # the whole list, one line each, above the one-line error
        for b in e.bad:
            print(f"spklip: cannot read {b.path}: {b.reason}", file=sys.stderr)
        raise
    for line in [f"skipped {s.path}: {s.reason}" for s in plan.info.skipped] + plan.notes:
        print(f"spklip: warning: {line}", file=sys.stderr)
    rows = tqdm(pmap(functools.partial(part_rows, plan.make, plan.info), plan.parts), total=plan.total,
                desc=f"build {kind}", unit="clip", disable=not progress)
    return write_rows(rows, out, plan.info, target_shard_mb=shard_mb, overwrite=overwrite)


def build_summary(meta: dict[str, Any], out: str | os.PathLike) -> str:
    """The line ``spklip data build`` prints: clips, shape, size, bits per pixel-plane and fingerprint."""
    return (f"wrote {meta['num_clips']} clips of {tuple(meta['clip_shape'])} to {out} "
            f"({meta['bytes_on_disk'] / 2**20:.2f} MiB, {meta['bits_per_pixel_plane']:.3f} bits per pixel-plane, "
            f"fingerprint {meta['fingerprint']})")


def has_shards(path: str | os.PathLike) -> bool:
    """Whether `path` (a folder or an object-store prefix) holds Parquet shard files (anywhere below it)."""
    if storage.is_uri(path):
        return any(f.endswith(".parquet") for f in storage.list_files(path))
    return any(Path(path).glob("**/*.parquet"))
