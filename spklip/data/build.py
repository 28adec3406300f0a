"""Building a spike shard dataset: a builder's spec -> clips -> Parquet shards, the one path that ``spklip data
build``, the smoke-test data (`spklip.data.smoke`) and the test fixtures all take.

`build_dataset` checks the output folder before a single clip is made (refuse early, delete nothing), then streams
the clips of ``kind`` through `write_shards`, which writes into a hidden sibling folder and renames it into place
when complete (docs/data.md, "What `--out` may replace").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from spklip.config import load_config
from spklip.data.folders import FolderSpec, dat_clips, video_clips
from spklip.data.moving_digits import DigitsSpec, digit_clips
from spklip.data.shards import Clip, DatasetInfo, check_out_dir, write_shards
from spklip.data.simulate import SimParams

KINDS = ("moving-digits", "video-folder", "dat-folder")


def preset_clip_shape(preset: str) -> tuple[int, int, int]:
    """``(N, H, W)``: the clip shape model `preset` is built for, so data and model agree."""
    cfg = load_config(overrides={"model_preset": preset}).model
    return cfg.num_planes, cfg.height, cfg.width


def dataset_clips(kind: str, spec: DigitsSpec | FolderSpec, sim: SimParams | None,
                  chunk_planes: int | None = None) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator and the clip count of builder `kind` (one of `KINDS`).

    ``moving-digits`` takes a `DigitsSpec`, ``video-folder`` and ``dat-folder`` a `FolderSpec`; `sim` is the
    simulator (None for ``dat-folder``: real recordings are not simulated); `chunk_planes` bounds the simulator's
    memory (`spklip.data.simulate.simulate_spikes`; the bits do not depend on it).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    want = DigitsSpec if kind == "moving-digits" else FolderSpec
    if not isinstance(spec, want):
        raise TypeError(f"{kind} is built from a {want.__name__}, got {type(spec).__name__}")
    if kind == "moving-digits":
        return digit_clips(spec, sim)
    return video_clips(spec, sim, chunk_planes=chunk_planes) if kind == "video-folder" else dat_clips(spec)


def build_dataset(out: str | os.PathLike, kind: str, spec: DigitsSpec | FolderSpec, sim: SimParams | None = None,
                  *, overwrite: bool = False, shard_mb: float = 64.0, progress: bool = False,
                  chunk_planes: int | None = None) -> dict[str, Any]:
    """Build the `kind` dataset `spec` describes into the folder `out` and return its metadata (`read_metadata`).

    Args:
        out: the dataset folder; refused unless absent or (with `overwrite`) empty or a spklip dataset.
        kind, spec, sim: see `dataset_clips`.
        overwrite: replace an existing spklip dataset, only once the new one is complete.
        shard_mb: a split's Parquet file is closed at this many MB of packed spikes.
        progress: show a tqdm bar over the clips.
        chunk_planes: spike planes the simulator holds at once (see `dataset_clips`).
    """
    check_out_dir(out, overwrite)  # before any clip is made: refuse early, delete nothing
    info, clips, total = dataset_clips(kind, spec, sim, chunk_planes)
    clips = tqdm(clips, total=total, desc=f"build {kind}", unit="clip", disable=not progress)
    return write_shards(clips, out, info, target_shard_mb=shard_mb, overwrite=overwrite)


def build_summary(meta: dict[str, Any], out: str | os.PathLike) -> str:
    """The line ``spklip data build`` prints: clips, shape, size, bits per pixel-plane and fingerprint."""
    return (f"wrote {meta['num_clips']} clips of {tuple(meta['clip_shape'])} to {out} "
            f"({meta['bytes_on_disk'] / 2**20:.2f} MiB, {meta['bits_per_pixel_plane']:.3f} bits per pixel-plane, "
            f"fingerprint {meta['fingerprint']})")


def has_shards(path: str | os.PathLike) -> bool:
    """Whether `path` holds Parquet shard files (anywhere below it)."""
    return any(Path(path).glob("**/*.parquet"))
