"""Class-per-folder datasets: ``video-folder`` (UCF101/HMDB51 layout, decoded with PyAV, resized, simulated) and
``dat-folder`` (real spike-camera recordings, one ``.dat`` per clip).

Layout: ``ROOT/<class folder>/<clip file>``; the class name is the folder name as words (``ApplyEyeMakeup`` ->
"apply eye makeup", ``brush_hair`` -> "brush hair"), which is also the caption. Held-out classes: ``unseen`` names
or ``unseen_classes`` drawn with the seed; each seen class's clips are split train/val/test by fractions, whole
groups at a time (``group_by``: UCF101's ``_gNN_``, HMDB51's source video), or by official split lists
(``split_files``: test from the lists, val carved from the listed training clips by group). The manifest's
``builder["splits"]`` records which (`split_record`).

Taking N planes from a clip:

* video: ``ceil(N / planes_per_frame)`` consecutive frames (every ``frame_stride``-th), centred in the video; the
  frames are scaled so the target H x W is covered (aspect kept) and centre-cropped, then simulated.
* recording: planes ``offset, offset + stride, ...`` (N of them) are read with a memory map (only that block is
  touched); ``spatial="subsample"`` centre-crops to the target aspect ratio and picks evenly spaced rows/columns
  (nearest neighbour keeps each pixel's firing statistics, unlike OR-pooling), ``spatial="crop"`` cuts a centred
  H x W window.

Frames for ``spklip data simulate`` (`read_frames`: a video, a ``.npy`` array or a folder of images) and for
``video-folder`` (`read_video_window`: only the window's frames are decoded, after seeking to the keyframe before
it) come from one PyAV decoder setup.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from spklip.data.dat import dat_num_planes, plane_bytes, read_dat
from spklip.data.npyfile import load_npy
from spklip.data.shards import Clip, DatasetInfo, Skipped
from spklip.data.simulate import SimParams, simulate_spikes
from spklip.data.parallel import Mapper, serial_map
from spklip.data.splits import (DEFAULT_GROUP_BY, SplitLists, assign_group_splits, assign_splits,
                                 choose_unseen_classes, clip_seed, compile_group_by, group_key, group_keys, humanize,
                                 read_split_lists)

# containers FFmpeg (PyAV) decodes, by extension; `check_inputs` then opens each file and decodes a frame
VIDEO_EXTS = (".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".gif", ".wmv", ".asf", ".flv",
              ".f4v", ".3gp", ".3g2", ".ogv", ".ts", ".mts", ".m2ts", ".vob", ".mxf", ".dv", ".y4m", ".nut")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_FIELDS = ("frame_stride", "pad_short")  # FolderSpec fields only video-folder uses
DAT_FIELDS = ("dat_height", "dat_width", "plane_offset", "plane_stride", "spatial")  # ... only dat-folder uses
SPLIT_FIELDS = ("group_by", "split_files", "split_number")  # recorded as builder["splits"] (`split_record`)


@dataclass(frozen=True)
class FolderSpec:
    """Arguments shared by both folder builders (stored in the dataset metadata)."""

    root: str
    num_planes: int = 32
    height: int = 64
    width: int = 64
    unseen_classes: int = 0  # classes to hold out, drawn with the seed (ignored if `unseen` is given)
    unseen: tuple[str, ...] = ()  # class folder names (or class names as words) to hold out
    val_frac: float = 0.2
    test_frac: float = 0.2
    seed: int = 0
    frame_stride: int = 1  # video: take every k-th frame
    pad_short: bool = False  # video: hold the last frame when a video is too short (else an error)
    dat_height: int = 250  # recording: sensor rows
    dat_width: int = 400  # recording: sensor columns
    plane_offset: int = 0  # recording: first plane taken
    plane_stride: int = 1  # recording: take every k-th plane
    spatial: str = "subsample"  # recording: "subsample" (aspect crop + nearest rows/cols) or "crop"
    group_by: str | None = DEFAULT_GROUP_BY  # regex: its match on a clip's file name is the clip's group (None/"none":
    # per-clip random split); all clips of a group get one split
    split_files: tuple[str, ...] = ()  # official split lists (files or folders): test and train from them
    split_number: int = 1  # which split's lists a folder in `split_files` gives (UCF101 0N, HMDB51 splitN)


@dataclass(frozen=True)
class FolderItem:
    """One clip to make: its class label, index within the class, file and split."""

    label: int
    index: int
    path: Path
    split: str


@dataclass
class FolderPlan:
    """What a folder build makes: the header (with the skipped inputs), the clips in build order, and warnings."""

    info: DatasetInfo
    items: list[FolderItem]
    notes: list[str]


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if not f.name.startswith("."))  # hidden files: never inputs


def scan_inputs(root: str | os.PathLike, exts: tuple[str, ...]) -> tuple[list[tuple[str, list[Path]]], list[Skipped]]:
    """``[(folder name, sorted clip files)]`` for every class folder holding files with one of ``exts``, and what
    was left out and why: top-level files, empty class folders or ones without such files, other files in class
    folders (hidden files and folders are ignored). Paths are absolute."""
    base = Path(root).expanduser().absolute()
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a folder")
    what = "video" if exts == VIDEO_EXTS else "/".join(exts)
    classes, skipped = [], []
    for entry in _files(base):
        if not entry.is_dir():
            skipped.append(Skipped(str(entry), "not a class folder (a file at the top level)"))
            continue
        found = _files(entry)
        files = [f for f in found if f.is_file() and f.suffix.lower() in exts]
        others = [f for f in found if f not in files]
        if not files:
            kinds = sorted({f.suffix.lower() or ("a folder" if f.is_dir() else "no extension") for f in others})
            why = f"holds no {what} files" + (f" (found {', '.join(kinds)})" if kinds else " (empty)")
            skipped.append(Skipped(str(entry), f"class folder left out: {why}"))
            continue
        skipped += [Skipped(str(f), f"not a {what} file") for f in others]
        classes.append((entry.name, files))
    if not classes:
        raise ValueError(f"{base} holds no class folders with {what} files (expected ROOT/<class>/<clip>)")
    return classes, skipped


def probe_video(path: Path) -> str | None:
    """None if PyAV opens `path` and decodes a frame, else why not."""
    frames = iter_video(path)
    try:
        return None if next(frames, None) is not None else "no video frames"
    except (ValueError, OSError) as e:
        return str(e).removeprefix(f"{path}: ").replace(f": '{path}'", "")  # FFmpeg names the file too
    finally:
        frames.close()


def probe_dat(path: Path, spec: FolderSpec) -> str | None:
    """None if `path` is a recording of the sensor size with the planes the build takes, else why not."""
    need = spec.plane_offset + (spec.num_planes - 1) * spec.plane_stride + 1
    try:
        total = dat_num_planes(path, spec.dat_height, spec.dat_width)
        if total < need:
            return (f"{total} planes, but planes up to {need} are needed (--plane-offset {spec.plane_offset}, "
                    f"--planes {spec.num_planes}, --plane-stride {spec.plane_stride})")
        read_dat(path, spec.dat_height, spec.dat_width, start=spec.plane_offset, count=1)
    except (ValueError, OSError) as e:
        return str(e).removeprefix(f"{path}: ")
    return None


def _probe(probe: Callable[[Path], str | None], path: Path) -> list[Skipped]:
    why = probe(path)
    return [] if why is None else [Skipped(str(path), why)]


class UnreadableInputs(ValueError):
    """Inputs that cannot be read (`bad`: each with the reason), found before any clip was made."""

    def __init__(self, bad: list[Skipped], total: int):
        self.bad = bad
        super().__init__(f"{len(bad)} of {total} inputs cannot be read (fix or remove them, or pass --skip-bad to "
                         f"leave them out); the first: {bad[0].path}: {bad[0].reason}")


def check_inputs(paths: list[Path], probe: Callable[[Path], str | None], *, skip_bad: bool = False,
                 pmap: Mapper = serial_map) -> list[Skipped]:
    """Probe every input before a clip is made: the bad ones with the reason, or (unless `skip_bad`)
    `UnreadableInputs` listing them. `pmap` maps the probe over the paths (`spklip.data.parallel`)."""
    bad = list(pmap(functools.partial(_probe, probe), paths))
    if bad and not skip_bad:
        raise UnreadableInputs(bad, len(paths))
    return bad


def _builder_args(spec: FolderSpec, kind: str) -> dict:
    """The spec as stored in the manifest: an absolute root, without the other folder kind's fields."""
    unused = (DAT_FIELDS if kind == "video-folder" else VIDEO_FIELDS) + SPLIT_FIELDS
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items() if k not in unused}
    return {**args, "root": str(Path(spec.root).expanduser().absolute())}


def folder_plan(spec: FolderSpec, kind: str, sim: SimParams | None, *, skip_bad: bool = False,
                pmap: Mapper = serial_map) -> FolderPlan:
    """List and check the inputs of a `kind` folder build (``video-folder`` or ``dat-folder``) and plan its clips:
    held-out classes, the split of each clip (`class_splits`), the header. Class folders without any readable file
    (or, with split lists, without a listed clip) are left out."""
    exts = VIDEO_EXTS if kind == "video-folder" else (".dat",)
    probe = probe_video if kind == "video-folder" else functools.partial(probe_dat, spec=spec)
    pattern = compile_group_by(spec.group_by)  # bad flags fail before any input is probed
    lists = read_split_lists(spec.split_files, spec.split_number) if spec.split_files else None
    classes, skipped = scan_inputs(spec.root, exts)
    if kind == "dat-folder":
        plane_bytes(spec.dat_height, spec.dat_width)  # a sensor size no file can fit: one error, not one per file
    bad = check_inputs([f for _, files in classes for f in files], probe, skip_bad=skip_bad, pmap=pmap)
    bad_paths = {b.path for b in bad}
    kept = [(name, [f for f in files if str(f) not in bad_paths]) for name, files in classes]
    skipped += bad
    base = Path(spec.root).expanduser().absolute()
    for name, files in kept:
        if not files:
            skipped.append(Skipped(str(base / name), "class folder left out: none of its files can be read"))
    kept = [(name, files) for name, files in kept if files]
    notes, tally = [], {}
    if lists is not None:
        kept, tally, list_notes = _listed_clips(kept, classes, lists, base)
        notes += list_notes
        skipped += [Skipped(str(base / name), "class folder left out: none of its clips is in the --split-file "
                            "lists") for name, files in kept if not files]
        kept = [(name, files) for name, files in kept if files]
    if not kept:
        raise ValueError(f"{spec.root}: no class folder holds a readable file")
    names = [name for name, _ in kept]
    unseen = choose_unseen_classes(names, spec.unseen_classes, list(spec.unseen), spec.seed)
    splits = [["unseen"] * len(files) if label in unseen else class_splits(spec, label, name, files, pattern, lists)
              for label, (name, files) in enumerate(kept)]
    notes += [n for label, (name, files) in enumerate(kept) if label not in unseen
              if (n := _empty_split_note(spec, name, splits[label], lists is not None))]
    record = split_record(spec, pattern, lists, kept, splits, tally)
    info = DatasetInfo(kind=kind, class_names=[humanize(n) for n in names], unseen_labels=sorted(unseen),
                       clip_shape=(spec.num_planes, spec.height, spec.width),
                       simulator=None if sim is None else {k: v for k, v in sim.to_dict().items() if k != "seed"},
                       builder={**_builder_args(spec, kind), "splits": record}, skipped=skipped)
    items = [FolderItem(label, j, f, s) for label, (_, files) in enumerate(kept)
             for j, (f, s) in enumerate(zip(files, splits[label]))]
    return FolderPlan(info, items, notes)


def class_splits(spec: FolderSpec, label: int, folder: str, files: list[Path], pattern: re.Pattern | None,
                 lists: SplitLists | None) -> list[str]:
    """The split of each clip of one seen class.

    With `lists`: the listed test clips go to test and the listed training clips are split train/val by group
    (``val_frac`` of them; ``test_frac`` is not used). Otherwise train/val/test by ``val_frac``/``test_frac``, by
    group. A class none of whose names carries a group (or no `pattern`) gets the per-clip random split.
    """
    rng = np.random.default_rng([spec.seed, label, 1])
    if lists is None:
        return _grouped_splits([f.name for f in files], spec.val_frac, spec.test_frac, spec.seed, rng, pattern)
    marks = [lists.mark(folder, f.name) for f in files]
    train = [f.name for f, m in zip(files, marks) if m == "train"]
    carved = iter(_grouped_splits(train, spec.val_frac, 0.0, spec.seed, rng, pattern) if train else [])
    return [next(carved) if m == "train" else "test" for m in marks]


def _grouped_splits(names: list[str], val_frac: float, test_frac: float, seed: int, rng: np.random.Generator,
                    pattern: re.Pattern | None) -> list[str]:
    """Whole groups per split (`assign_group_splits`), or, when no name carries a group (or no `pattern`), the
    seeded per-clip split `assign_splits` (the same clips per split as builds made before groups)."""
    if pattern is None or all(group_key(n, pattern) is None for n in names):  # the per-clip split of old builds
        return assign_splits(len(names), val_frac, test_frac, rng)
    return assign_group_splits(group_keys(names, pattern), val_frac, test_frac, seed)


def _listed_clips(kept: list[tuple[str, list[Path]]], scanned: list[tuple[str, list[Path]]], lists: SplitLists,
                  base: Path) -> tuple[list[tuple[str, list[Path]]], dict[str, int], list[str]]:
    """The readable clips the lists mark train or test, the counts of those left out (``unlisted``: in no list,
    ``unused``: HMDB51's 0, ``missing``: listed train/test but not under the root), and one warning per count."""
    on_disk = {(name.lower(), f.name) for name, files in scanned for f in files}
    listed = [(name, [f for f in files if lists.mark(name, f.name) in ("train", "test")]) for name, files in kept]
    marks = [lists.mark(name, f.name) for name, files in kept for f in files]
    tally = {"unlisted": marks.count(None), "unused": marks.count("unused"),
             "missing": sum(k not in on_disk for k, m in lists.marks.items() if m != "unused")}
    if not any(files for _, files in listed):
        raise ValueError(f"--split-file: none of the clips the lists name is under {base} (lists of another "
                         "dataset, or another layout?)")
    why = {"unlisted": "under the root {} in no list", "unused": "{} marked 0 (unused) in the HMDB51 lists",
           "missing": "named in the lists {} not under the root"}
    notes = [f"--split-file: {n} clip{'s' * (n != 1)} {why[k].format('is' if n == 1 else 'are')}: left out"
             for k, n in tally.items() if n]
    return listed, tally, notes


def _empty_split_note(spec: FolderSpec, name: str, splits: list[str], listed: bool) -> str | None:
    """The warning for a seen class whose val or test split is empty although it should hold clips, else None."""
    wanted = {"val": spec.val_frac > 0, "test": listed or spec.test_frac > 0}
    empty = [s for s in ("val", "test") if wanted[s] and s not in splits]
    if not empty:
        return None
    n = len(splits)
    return (f"class {name!r} has {n} clip{'s' * (n != 1)}: its {' and '.join(empty)} split{'s' * (len(empty) > 1)} "
            "will be empty")


def split_record(spec: FolderSpec, pattern: re.Pattern | None, lists: SplitLists | None,
                 classes: list[tuple[str, list[Path]]], splits: list[list[str]], tally: dict[str, int]) -> dict:
    """How the splits were made, for the manifest (``builder["splits"]``): ``method`` (``random``: per clip,
    ``group``: whole groups, ``split-file``: official lists), ``group_by`` (the regex, or None), ``split_files``
    (absolute), ``split_number``, ``grouped_clips`` (seen clips whose name carries a group), ``groups`` (groups
    per seen split) and, for lists, the ``unlisted`` / ``unused`` / ``missing`` counts."""
    method = "split-file" if lists is not None else "group" if pattern is not None else "random"
    record: dict = {"method": method, "group_by": None if pattern is None else pattern.pattern,
                    "split_files": [] if lists is None else list(lists.files),
                    "split_number": None if lists is None else lists.number, **tally}
    if pattern is not None:
        seen = [(label, f.name, s) for label, (_, files) in enumerate(classes)
                for f, s in zip(files, splits[label]) if s != "unseen"]
        keys = [(label, group_key(name, pattern), s) for label, name, s in seen]
        record["grouped_clips"] = sum(k is not None for _, k, _ in keys)
        record["groups"] = {s: len({(label, k) for label, k, t in keys if k is not None and t == s})
                            for s in ("train", "val", "test")}
    return record


def iter_video(path: str | os.PathLike, height: int | None = None, width: int | None = None, *,
               cover: bool = False) -> Iterator[np.ndarray]:
    """Stream the frames of a video, decoded with PyAV, as gray uint8 ``[H, W]`` arrays (one frame in memory).

    ``cover=False``: each frame is scaled to ``height x width`` (a size not given keeps the frame's).
    ``cover=True``: scaled to cover ``height x width`` with the aspect ratio kept, then centre-cropped to it.

    Raises:
        ValueError: naming `path`, when it is not a video PyAV can decode.
    """
    import av  # optional dependency (the `video` extra): only reading a video needs it

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                yield _gray(frame, height, width, cover)
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: cannot decode video ({e})") from e


def _gray(frame, height: int | None, width: int | None, cover: bool) -> np.ndarray:
    """One decoded PyAV frame -> gray uint8 ``[H, W]`` (see `iter_video` for ``cover``)."""
    if not cover:
        return frame.reformat(width=width or frame.width, height=height or frame.height, format="gray").to_ndarray()
    scale = max(height / frame.height, width / frame.width)
    h, w = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    img = frame.reformat(width=w, height=h, format="gray").to_ndarray()  # [h, w] uint8
    top, left = (h - height) // 2, (w - width) // 2
    return img[top:top + height, left:left + width]


def read_video(path: Path, height: int, width: int) -> np.ndarray:
    """Decode a video with PyAV to gray uint8 ``[T, H, W]``, scaled to cover H x W (aspect kept) and centre-cropped."""
    frames = list(iter_video(path, height, width, cover=True))
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)


def read_video_window(path: Path, height: int, width: int, needed: int, stride: int = 1,
                      pad: bool = False) -> np.ndarray:
    """The ``needed`` centred frames (every ``stride``-th) of a video as gray uint8 ``[needed, H, W]``, covering
    H x W: the frames ``_frame_window(read_video(...))`` gives, decoding only from the keyframe before the window.

    One demux pass (no decoding) lists the packets' timestamps, which gives the frame count and the window's
    presentation timestamps; the decoder then starts at the last keyframe whose timestamp is at or before the
    window (so every frame of the window has its references) and stops after the window. Where the timestamps
    cannot be trusted (missing or repeated) or a window frame does not come out, it falls back to decoding
    everything; a too-short video also takes that path (it needs every frame, or the error).
    """
    import av  # optional dependency (the `video` extra): only reading a video needs it

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            packets = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size]  # decode order
            pts = sorted(p[0] for p in packets) if all(p[0] is not None for p in packets) else None
            span = (needed - 1) * stride + 1
            if pts is None or len(set(pts)) != len(pts) or len(pts) < span:
                return _frame_window(read_video(path, height, width), needed, stride, pad, path)
            start = (len(pts) - span) // 2
            targets = pts[start:start + span:stride]  # [needed] presentation timestamps of the window
            keys = [(t, d) for t, d, key in packets if key and t <= targets[0]]
            if not keys:  # no keyframe before the window: decode everything
                return _frame_window(read_video(path, height, width), needed, stride, pad, path)
            key_pts, key_dts = max(keys)
            container.seek(key_pts if key_dts is None else key_dts, stream=stream)  # lands on that keyframe
            wanted, frames = set(targets), {}
            for frame in container.decode(stream):
                if frame.pts in wanted:
                    frames[frame.pts] = _gray(frame, height, width, cover=True)
                    if len(frames) == needed:
                        break
                elif frame.pts is not None and frame.pts > targets[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path}: cannot decode video ({e})") from e
    if len(frames) != needed:
        return _frame_window(read_video(path, height, width), needed, stride, pad, path)
    return np.stack([frames[t] for t in targets])


def read_frames(path: str | os.PathLike, height: int | None = None, width: int | None = None,
                max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Frames ``[H, W]`` (or ``[H, W, 3]`` from a ``.npy``) of a video, a ``.npy`` array ``[T, H, W(, 3)]`` or a
    folder of images, one at a time (videos are streamed, ``.npy`` files memory-mapped), at most `max_frames`.

    Videos and images are scaled to cover ``height x width`` (aspect kept) and centre-cropped, as ``video-folder``
    builds do; with only one of the two given, the other follows the aspect ratio (nothing is cropped). A ``.npy``
    must already be that size. Raises FileNotFoundError or ValueError naming `path`.
    """
    return itertools.islice(_frames(Path(path), height, width), max_frames)


def frame_count(path: str | os.PathLike, max_frames: int | None = None) -> int | None:
    """How many frames `read_frames` will give (for a progress bar's total), or None when the container does not
    say (a video stream without a frame count). Never decodes: ``.npy`` shape, image files, the stream header."""
    path = Path(path)
    count: int | None = None
    try:
        if path.suffix == ".npy":
            count = int(np.load(path, mmap_mode="r").shape[0])
        elif path.is_dir():
            count = sum(1 for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif path.exists():
            import av  # optional dependency (the `video` extra): only reading a video needs it

            with av.open(str(path)) as container:
                count = int(container.streams.video[0].frames) or None
    except Exception:  # noqa: BLE001 - a count is only a hint: read_frames reports what is wrong with the input
        return None
    return count if max_frames is None or count is None else min(count, max_frames)


def _frames(path: Path, height: int | None, width: int | None) -> Iterator[np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npy":
        arr = load_npy(path, (3, 4), "frames [T, H, W] or [T, H, W, 3] (uint8, or float in [0, 1])")
        if (height or width) and arr.shape[1:3] != (height or arr.shape[1], width or arr.shape[2]):
            raise ValueError("--height/--width resizing is for videos and images; resize the .npy beforehand")
        yield from arr
    elif path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"{path} holds no images ({'/'.join(IMAGE_EXTS)})")
        for f in files:
            img = Image.open(f).convert("L")
            yield np.asarray(_cover_crop(img, *cover_size(img.height, img.width, height, width)))
    elif height or width:
        first = next(iter_video(path), None)  # the video's own size, for the side not given
        h, w = cover_size(*(first.shape if first is not None else (height or 1, width or 1)), height, width)
        yield from iter_video(path, h, w, cover=True)
    else:
        yield from iter_video(path)


def cover_size(frame_h: int, frame_w: int, height: int | None, width: int | None) -> tuple[int, int]:
    """The output size for frames of ``frame_h x frame_w``: ``height x width``; a side not given follows the
    aspect ratio (none given: the frame's own size)."""
    if height and width:
        return height, width
    if height:
        return height, max(1, round(frame_w * height / frame_h))
    if width:
        return max(1, round(frame_h * width / frame_w)), width
    return frame_h, frame_w


def _cover_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """`img` scaled to cover ``height x width`` (aspect kept) and centre-cropped to it (what `iter_video` does)."""
    if (img.height, img.width) == (height, width):
        return img
    scale = max(height / img.height, width / img.width)
    h, w = max(height, round(img.height * scale)), max(width, round(img.width * scale))
    top, left = (h - height) // 2, (w - width) // 2
    return img.resize((w, h), Image.BILINEAR).crop((left, top, left + width, top + height))


def _frame_window(frames: np.ndarray, needed: int, stride: int, pad: bool, path: Path) -> np.ndarray:
    """``needed`` frames, every ``stride``-th, centred in the video (held last frame if short and ``pad``)."""
    span = (needed - 1) * stride + 1
    if frames.shape[0] < span:
        if not pad:
            raise ValueError(f"{path}: {frames.shape[0]} frames, but {needed} frames at stride {stride} are needed; "
                             "lower --planes or --frame-stride, raise --planes-per-frame, or pass --pad-short")
        frames = np.concatenate([frames, np.repeat(frames[-1:], span - frames.shape[0], axis=0)])
    start = (frames.shape[0] - span) // 2
    return frames[start:start + span:stride]


def video_clip(spec: FolderSpec, sim: SimParams, info: DatasetInfo, item: FolderItem,
               chunk_planes: int | None = None) -> list[Clip]:
    """The clip of one video (only the window's frames decoded: `read_video_window`; simulated with the clip's own
    seed; `chunk_planes` bounds the simulator's memory): what a build worker makes."""
    needed = math.ceil(spec.num_planes / sim.planes_per_frame)
    label, j, path, split = item.label, item.index, item.path, item.split
    frames = read_video_window(path, spec.height, spec.width, needed, spec.frame_stride, spec.pad_short)
    seed = clip_seed(spec.seed, label, j)
    spikes = simulate_spikes(frames, threshold=sim.threshold, planes_per_frame=sim.planes_per_frame,
                             seed=seed, mismatch=sim.mismatch, dark_current=sim.dark_current, chunk_planes=chunk_planes)
    return [Clip(spikes=spikes[:spec.num_planes], label=label, caption=info.class_names[label], split=split,
                 source=str(path), clip_id=f"{path.parent.name}/{path.name}", sim_seed=seed)]


def video_clips(spec: FolderSpec, sim: SimParams, *,
                chunk_planes: int | None = None) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator and the clip count for a folder of class folders of videos."""
    plan = folder_plan(spec, "video-folder", sim)
    make = functools.partial(video_clip, spec, sim, plan.info, chunk_planes=chunk_planes)
    return plan.info, serial_map(make, plan.items), len(plan.items)


def take_planes(path: Path, spec: FolderSpec) -> np.ndarray:
    """N planes of one recording, cropped/sub-sampled to H x W (see the module docstring)."""
    span = (spec.num_planes - 1) * spec.plane_stride + 1
    planes = read_dat(path, spec.dat_height, spec.dat_width, start=spec.plane_offset, count=span)
    planes = planes[::spec.plane_stride]  # [N, dat_H, dat_W]
    sh, sw, h, w = spec.dat_height, spec.dat_width, spec.height, spec.width
    if spec.spatial == "crop":
        if sh < h or sw < w:
            raise ValueError(f"cannot crop {h}x{w} from a {sh}x{sw} recording; use --spatial subsample")
        top, left = (sh - h) // 2, (sw - w) // 2
        return np.ascontiguousarray(planes[:, top:top + h, left:left + w])
    if spec.spatial != "subsample":
        raise ValueError(f"spatial must be 'subsample' or 'crop', got {spec.spatial!r}")
    ch, cw = (sh, round(sh * w / h)) if sh * w <= sw * h else (round(sw * h / w), sw)  # target aspect inside
    top, left = (sh - ch) // 2, (sw - cw) // 2
    rows = top + np.floor((np.arange(h) + 0.5) * ch / h).astype(int)  # [H] nearest source rows
    cols = left + np.floor((np.arange(w) + 0.5) * cw / w).astype(int)  # [W] nearest source columns
    return np.ascontiguousarray(planes[:, rows[:, None], cols[None, :]])  # [N, H, W]


def dat_clip(spec: FolderSpec, info: DatasetInfo, item: FolderItem) -> list[Clip]:
    """The clip of one recording: what a build worker makes."""
    try:
        spikes = take_planes(item.path, spec)
    except ValueError as e:
        raise ValueError(str(e) if str(item.path) in str(e) else f"{item.path}: {e}") from e  # path named once
    return [Clip(spikes=spikes, label=item.label, caption=info.class_names[item.label], split=item.split,
                 source=str(item.path), clip_id=f"{item.path.parent.name}/{item.path.name}")]


def dat_clips(spec: FolderSpec) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator and the clip count for a folder of class folders of ``.dat`` recordings."""
    plan = folder_plan(spec, "dat-folder", None)
    return plan.info, serial_map(functools.partial(dat_clip, spec, plan.info), plan.items), len(plan.items)
