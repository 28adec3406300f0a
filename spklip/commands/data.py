"""``spklip data simulate | build | inspect``: videos/frames -> spikes, spike shard datasets, dataset summaries."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spklip.cliargs import (csv_of, float_range, fraction, int_range, nonneg_float, nonneg_int, positive_float,
                            positive_int, seed_int)
from spklip.data import storage
from spklip.data.dat import write_dat
from spklip.data.folders import FolderSpec, frame_count, read_frames
from spklip.data.parallel import serial_map
from spklip.data.phases import ceilings_line, with_speeds
from spklip.data.shards import (SEEN_SPLITS, SPLITS, check_out_dir, decode_batch, open_shard, read_shard, reading,
                                 validate_shards)
from spklip.data.simulate import SimParams, iter_simulate
from spklip.data.splits import DEFAULT_GROUP_BY, describe_split_method, leaking_groups
from spklip.outdir import atomic_file, check_file_out


def _csv(kind):
    return lambda text: tuple(kind(x.strip()) for x in text.split(",") if x.strip())


def _sim_args(p: argparse.ArgumentParser, chunk: bool = True) -> None:
    g = p.add_argument_group("simulator")
    g.add_argument("--threshold", type=float_range(1.0), default=2.0, help="charge to fire, >= 1 (default 2)")
    g.add_argument("--planes-per-frame", type=positive_int, default=1,
                   help="spike planes per video frame (interpolated)")
    g.add_argument("--mismatch", type=nonneg_float, default=0.0, help="relative std of per-pixel thresholds (0 = off)")
    g.add_argument("--dark-current", type=nonneg_float, default=0.0,
                   help="mean dark charge per pixel and plane, below --threshold (0 = off)")
    g.add_argument("--seed", type=seed_int, default=0)
    if chunk:  # (moving-digits renders each clip whole: its simulator takes no chunk size yet)
        g.add_argument("--chunk-planes", type=positive_int,
                       help="spike planes simulated and held at once; bounds memory "
                       "(default: 32 MiB of spikes, at most 256 planes; the bits do not depend on it)")


def register(subparsers) -> None:
    """Add the ``data`` command group."""
    data = subparsers.add_parser("data", help="spike data: simulate, build shard datasets, inspect")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="a video, a .npy of frames or a folder of images -> spikes (.dat/.npy)")
    sim.add_argument("input", help="video file (PyAV), .npy frames [T,H,W(,3)], or a folder of images")
    sim.add_argument("--out", required=True, help="output .dat (streamed, SpikeCV layout) or .npy [N,H,W] uint8")
    sim.add_argument("--height", type=positive_int, help="resize frames to this many rows (default: keep)")
    sim.add_argument("--width", type=positive_int, help="resize frames to this many columns (default: keep)")
    sim.add_argument("--max-frames", type=positive_int, help="use at most this many frames")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file --out (a plain file; never a "
                     "folder or a link)")
    _sim_args(sim)
    sim.set_defaults(handler=cmd_simulate)

    build = sub.add_parser("build", help="build a Parquet spike shard dataset")
    kinds = build.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, text in (("moving-digits", "handwritten digits moving on a canvas (built in)"),
                       ("video-folder", "ROOT/<class>/<video>: e.g. your copy of UCF101 or HMDB51"),
                       ("dat-folder", "ROOT/<class>/<clip>.dat: real spike-camera recordings")):
        p = kinds.add_parser(kind, help=text)
        _build_args(p, kind)
        p.set_defaults(handler=cmd_build)

    inspect = sub.add_parser("inspect", help="check every page of a shard dataset (checksums) and print its rows, "
                             "classes, splits and bits per pixel-plane")
    inspect.add_argument("path")
    inspect.set_defaults(handler=cmd_inspect)


def _build_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--out", required=True, help="dataset folder to create, or an s3://bucket/prefix URI "
                       "(docs/cluster.md, \"Object storage (S3)\")")
    p.add_argument("--overwrite", action="store_true", help="replace an existing spklip dataset folder (nothing else)")
    p.add_argument("--model", default="spklip-tiny", help="take the clip shape (N, H, W) from this model preset")
    p.add_argument("--planes", type=positive_int, help="spike planes N per clip (overrides --model)")
    p.add_argument("--height", type=positive_int, help="clip rows H (overrides --model)")
    p.add_argument("--width", type=positive_int, help="clip columns W (overrides --model)")
    p.add_argument("--val-frac", type=float_range(0.0, 1.0, high_open=True), default=0.2,
                   help="share of each seen class's clips for val, in [0, 1)")
    p.add_argument("--test-frac", type=float_range(0.0, 1.0, high_open=True), default=0.2,
                   help="share of each seen class's clips for test, in [0, 1)")
    p.add_argument("--shard-mb", type=positive_float, default=64.0, help="close a shard file at this many MB of spikes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    par = p.add_argument_group("parallel build (a Ray Data pipeline; the same dataset as a one-process build)")
    par.add_argument("--workers", type=positive_int,
                     help="build with this many Ray workers (a local Ray instance unless "
                     "--address/RAY_ADDRESS names a cluster, whose CPUs it then caps)")
    par.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                     help="build on this Ray cluster (auto, HOST:PORT, ray://...; default $RAY_ADDRESS)")
    if kind == "moving-digits":
        p.add_argument("--clips-per-class", type=positive_int, default=20)
        p.add_argument("--digits", type=csv_of(int_range(0, 9)), default=tuple(range(10)),
                       help="e.g. 0,1,7 (default all)")
        p.add_argument("--motions", type=_csv(str), help="subset of left,right,up,down,rotate,grow,shrink,still, "
                       "and/or two-phase motions DIR[:SPEED]-DIR[:SPEED] that rest at the centre in between, e.g. "
                       "left-up,down-right (each with its time-reverse; docs/data.md)")
        p.add_argument("--speeds", type=_csv(str), help="each two-phase motion once per speed pattern: slow,fast "
                       "(speed classes) or slow-fast,fast-slow (speeds up / slows down)")
        p.add_argument("--pause", type=nonneg_int, help="planes two-phase motions rest at the centre (default: the "
                       "default centred window + 2, 13 planes)")
        p.add_argument("--darts", type=nonneg_int, default=0, metavar="PLANES",
                       help="make each two-phase motion A-B two darts of PLANES planes, out and back, at a quarter "
                       "and three quarters of the clip, the digit at the centre in between: does K cover when "
                       "things happen? (docs/data.md)")
        p.add_argument("--dart-spread", type=nonneg_int, default=0, metavar="PLANES",
                       help="each clip draws each dart's centre uniformly within +-PLANES of its quarter point "
                       "(default 0: always at the quarter points)")
        p.add_argument("--unseen-classes", type=nonneg_int, help="held-out (digit, motion) classes (default 1/8)")
        p.add_argument("--unseen", type=_csv(str), default=(), help="hold out these classes, DIGIT:MOTION, e.g. "
                       "0:left,0:right,1:left,1:right (zero-shot must then read both the digit and the motion)")
        p.add_argument("--speed", type=nonneg_float, default=1.0, help="px per frame (rotation/scaling scale with it)")
        p.add_argument("--digit-size", type=nonneg_int, default=0, help="digit side in px (0: 45%% of the canvas)")
        p.add_argument("--clutter", type=nonneg_int, default=0, help="static distractor digits per clip")
        p.add_argument("--background", type=fraction, default=0.05, help="background intensity in [0, 1]")
        p.add_argument("--source", choices=("mnist", "sklearn"), default="mnist", help="handwritten digits used")
    else:
        p.add_argument("--root", required=True, help="folder of class folders")
        p.add_argument("--unseen-classes", type=nonneg_int, default=0, help="hold out this many classes (seeded draw)")
        p.add_argument("--unseen", type=_csv(str), default=(),
                       help="hold out these classes: folder names (bag_moves_up) or class names (bag moves up)")
        p.add_argument("--skip-bad", action="store_true", help="leave out inputs that cannot be read (listed on "
                       "stderr and in the manifest) instead of refusing the build")
        grp = p.add_argument_group("splits without leakage (docs/data.md, \"Splits without leakage\")")
        grp.add_argument("--group-by", default=DEFAULT_GROUP_BY, metavar="REGEX",
                         help="a clip's group is this regex's match on its file name (its first group, if it has "
                         "one); all clips of a group land in one split. Default: UCF101's _gNN_ and HMDB51's source "
                         "video; 'none': each clip drawn at random")
        grp.add_argument("--split-file", action="append", default=[], metavar="PATH",
                         help="official split lists (repeatable; a file or a folder): UCF101 trainlist0N.txt + "
                         "testlist0N.txt, or HMDB51 <class>_test_splitN.txt; test comes from the lists, val "
                         "(--val-frac of the listed training clips) by group, --test-frac is not used")
        grp.add_argument("--split-number", type=positive_int, default=1,
                         help="which split's lists to take from a --split-file folder (default 1)")
    if kind == "video-folder":
        p.add_argument("--frame-stride", type=positive_int, default=1, help="take every k-th video frame")
        p.add_argument("--pad-short", action="store_true", help="hold the last frame of too-short videos")
    if kind == "dat-folder":
        p.add_argument("--dat-height", type=positive_int, required=True,
                       help="sensor rows of the recordings (e.g. 250)")
        p.add_argument("--dat-width", type=positive_int, required=True,
                       help="sensor columns of the recordings (e.g. 400)")
        p.add_argument("--plane-offset", type=nonneg_int, default=0, help="first plane taken from each recording")
        p.add_argument("--plane-stride", type=positive_int, default=1, help="take every k-th plane")
        p.add_argument("--spatial", choices=("subsample", "crop"), default="subsample",
                       help="subsample: aspect crop + evenly spaced rows/cols; crop: centred H x W window")
        p.add_argument("--seed", type=seed_int, default=0, help="seeds the split assignment")
    else:
        _sim_args(p, chunk=kind == "video-folder")


def clip_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(N, H, W) from ``--model PRESET``, overridden by ``--planes/--height/--width``."""
    from spklip.data.build import preset_clip_shape  # spklip.data.build imports torch (seconds): only for builds

    n, h, w = preset_clip_shape(args.model)
    return args.planes or n, args.height or h, args.width or w


def dataset_spec(args: argparse.Namespace):
    """The builder's spec and simulator for ``args.kind``: ``(DigitsSpec | FolderSpec, SimParams | None)``."""
    from spklip.data.moving_digits import MOTIONS, DigitsSpec  # imports torch (seconds): only for builds

    n, h, w = clip_shape(args)
    sim = None
    if args.kind != "dat-folder":
        sim = SimParams(args.threshold, args.planes_per_frame, args.seed, args.mismatch, args.dark_current)
    if args.kind == "moving-digits":
        motions = args.motions or tuple(MOTIONS)
        if args.speeds:
            motions = with_speeds(motions, args.speeds)
        spec = DigitsSpec(num_planes=n, height=h, width=w, digits=args.digits, motions=motions,
                          clips_per_class=args.clips_per_class, unseen_classes=args.unseen_classes,
                          val_frac=args.val_frac, test_frac=args.test_frac, speed=args.speed,
                          digit_size=args.digit_size, clutter=args.clutter, background=args.background,
                          source=args.source, seed=args.seed, pause=args.pause, unseen=args.unseen,
                          dart=args.darts, dart_spread=args.dart_spread)
        return spec, sim
    extra = ({"frame_stride": args.frame_stride, "pad_short": args.pad_short} if args.kind == "video-folder" else
             {"dat_height": args.dat_height, "dat_width": args.dat_width, "plane_offset": args.plane_offset,
              "plane_stride": args.plane_stride, "spatial": args.spatial})
    spec = FolderSpec(root=args.root, num_planes=n, height=h, width=w, unseen_classes=args.unseen_classes,
                      unseen=args.unseen, val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed,
                      group_by=args.group_by, split_files=tuple(args.split_file), split_number=args.split_number,
                      **extra)
    return spec, sim


def cmd_build(args: argparse.Namespace) -> int:
    from spklip.data.build import build_dataset, build_summary  # imports torch (seconds): only for builds

    spec, sim = dataset_spec(args)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    check_out_dir(args.out, args.overwrite)  # refuse early, before Ray starts
    if args.workers is not None or args.address:
        from spklip.runtime.parallel import ray_mapper  # imports Ray (seconds): only for a parallel build

        mapper = ray_mapper(workers=args.workers, address=args.address)
    else:
        mapper = contextlib.nullcontext(serial_map)
    with mapper as pmap:
        meta = build_dataset(args.out, args.kind, spec, sim, overwrite=args.overwrite, shard_mb=args.shard_mb,
                             progress=not args.no_progress, skip_bad=getattr(args, "skip_bad", False), pmap=pmap,
                             chunk_planes=getattr(args, "chunk_planes", None))
    print(build_summary(meta, args.out))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    meta = validate_shards(args.path, pages=True)  # every page of every file, checksums verified
    n, h, w = meta["clip_shape"]
    print(f"dataset      {args.path} ({meta['kind']}, schema v{meta['schema_version']}, "
          f"fingerprint {meta['fingerprint']})")
    print(f"rows         {meta['num_clips']} clips of {n} planes x {h} x {w}")
    print("splits       " + ", ".join(f"{s} {meta['splits'].get(s, 0)}" for s in SPLITS))
    print("split method " + describe_split_method(meta.get("builder") or {}, meta.get("kind", "")))
    _warn_random_split(args.path, meta)
    print(f"classes      {len(meta['class_names'])}: {len(meta['seen_labels'])} seen, "
          f"{len(meta['unseen_labels'])} unseen")
    print(f"on disk      {meta['bytes_on_disk'] / 2**20:.2f} MiB in "
          f"{sum(len(v) for v in meta['shards'].values())} shard files, "
          f"{meta['bits_per_pixel_plane']:.3f} bits per pixel-plane")
    print("pages        every page of every file read; page checksums verified (datasets built before spklip "
          "wrote them have none)")
    print(f"firing rate  {_firing_rate(args.path, meta):.4f} spikes per pixel-plane (first shard)")
    sim = meta["simulator"]
    print("simulator    " + (", ".join(f"{k}={v}" for k, v in sim.items()) if sim else "none (real recordings)"))
    if ceilings_line(meta):
        print(f"ceilings     {ceilings_line(meta)}")
    print("unseen       " + ("; ".join(meta["unseen_classes"]) or "none"))
    shown = meta["seen_classes"][:12]
    more = len(meta["seen_classes"]) - len(shown)
    print("seen         " + "; ".join(shown) + (f"; ... ({more} more)" if more > 0 else ""))
    return 0


def _warn_random_split(path: str, meta: dict) -> None:
    """One line on stderr when the splits were drawn per clip at random although the stored clip names carry
    groups (the default --group-by): clips of one group (actor, source video) may then be in train and test."""
    record = (meta.get("builder") or {}).get("splits")
    if isinstance(record, dict) and record.get("method") != "random":
        return
    clips = []
    for split in SEEN_SPLITS:
        for rel in meta["shards"].get(split, []):
            file = storage.join(path, rel)
            with reading(file):
                table = read_shard(file, columns=["clip_id"])
            clips += [(clip_id, split) for clip_id in table.column("clip_id").to_pylist()]
    grouped, groups, leaking = leaking_groups(clips)
    if grouped:
        print(f"spklip: warning: {path}: splits were drawn per clip at random, but {grouped} of {len(clips)} clip "
              f"names carry a group (UCF101 _gNN_, HMDB51 source video) and {leaking} of {groups} groups have clips "
              "in more than one split; rebuild with --group-by (the default) or --split-file", file=sys.stderr)


def _firing_rate(path: str, meta: dict) -> float:
    first = storage.join(path, next(files[0] for files in meta["shards"].values() if files))
    with reading(first):
        table = open_shard(first).read_row_group(0).slice(0, 64)
    return float(decode_batch(table)["spikes"].mean())


def cmd_simulate(args: argparse.Namespace) -> int:
    """``spklip data simulate INPUT --out FILE``: all or nothing, and an existing FILE only with --overwrite."""
    out = Path(args.out)
    if out.suffix not in (".dat", ".npy"):
        raise ValueError(f"--out must end in .dat or .npy, got {out.name}")
    check_file_out(out, args.overwrite)  # before minutes of simulation: a folder or a link is never replaced
    SimParams(args.threshold, args.planes_per_frame, args.seed, args.mismatch, args.dark_current)  # checked now
    frames = tqdm(read_frames(args.input, args.height, args.width, args.max_frames), desc="simulate", unit="frame",
                  total=frame_count(args.input, args.max_frames))
    chunks = iter_simulate(frames, threshold=args.threshold, planes_per_frame=args.planes_per_frame, seed=args.seed,
                           mismatch=args.mismatch, dark_current=args.dark_current, chunk_planes=args.chunk_planes)
    if out.suffix == ".dat":
        planes = write_dat(out, chunks)  # streamed into a marked temporary folder beside `out`, then renamed
        shape = None
    else:
        spikes = np.concatenate(list(chunks))
        with atomic_file(out) as tmp:  # written whole, then renamed: no partial .npy, no leftover on failure
            with open(tmp, "wb") as f:
                np.save(f, spikes)
        planes, shape = spikes.shape[0], spikes.shape
    print(f"wrote {planes} spike planes{'' if shape is None else ' ' + str(shape)} to {out}")
    return 0
