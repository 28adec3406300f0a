"""Class-per-folder datasets: ``video-folder`` (UCF101/HMDB51 layout, decoded with PyAV, resized, simulated) and
``dat-folder`` (real spike-camera recordings, one ``.dat`` per clip).

Layout: ``ROOT/<class folder>/<clip file>``; the class name is the folder name as words (``ApplyEyeMakeup`` ->
"apply eye makeup", ``brush_hair`` -> "brush hair"), which is also the caption. Held-out classes: ``unseen`` names
or ``unseen_classes`` drawn with the seed; each seen class's clips are split train/val/test by fractions.

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

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from spklip.data.dat import read_dat
from spklip.data.shards import Clip, DatasetInfo
from spklip.data.simulate import SimParams, simulate_spikes
from spklip.data.splits import assign_splits, choose_unseen_classes, clip_seed, humanize

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderSpec:
    """Arguments shared by both folder builders (stored in the dataset metadata)."""

    root: str
    num_planes: int = 32
    height: int = 64
    width: int = 64
    unseen_classes: int = 0  # classes to hold out, drawn with the seed (ignored if `unseen` is given)
    unseen: tuple[str, ...] = ()  # folder names to hold out
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


def scan_classes(root: str | os.PathLike, exts: tuple[str, ...]) -> list[tuple[str, list[Path]]]:
    """``[(folder name, sorted clip files)]`` for every class folder holding files with one of ``exts``."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is not a folder")
    classes = [(d.name, sorted(f for f in d.iterdir() if f.suffix.lower() in exts))
               for d in sorted(base.iterdir()) if d.is_dir()]
    classes = [(name, files) for name, files in classes if files]
    if not classes:
        raise ValueError(f"{base} holds no class folders with {'/'.join(exts)} files (expected ROOT/<class>/<clip>)")
    return classes


def _plan(spec: FolderSpec, kind: str, exts: tuple[str, ...], sim: SimParams | None):
    classes = scan_classes(spec.root, exts)
    names = [name for name, _ in classes]
    unseen = choose_unseen_classes(names, spec.unseen_classes, list(spec.unseen), spec.seed)
    for label, (name, files) in enumerate(classes):
        if label not in unseen:
            assign_splits(len(files), spec.val_frac, spec.test_frac, np.random.default_rng(0))  # fail early
    builder = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()}
    info = DatasetInfo(kind=kind, class_names=[humanize(n) for n in names], unseen_labels=sorted(unseen),
                       clip_shape=(spec.num_planes, spec.height, spec.width),
                       simulator=None if sim is None else {k: v for k, v in sim.to_dict().items() if k != "seed"},
                       builder=builder)
    plan = []
    for label, (name, files) in enumerate(classes):
        rng = np.random.default_rng([spec.seed, label, 1])
        splits = (["unseen"] * len(files) if label in unseen else
                  assign_splits(len(files), spec.val_frac, spec.test_frac, rng))
        plan += [(label, j, f, s) for j, (f, s) in enumerate(zip(files, splits))]
    return info, plan


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

    Videos and images are resized to ``height x width`` (a size not given is kept); a ``.npy`` must already be that
    size. Raises FileNotFoundError or ValueError naming `path`.
    """
    return itertools.islice(_frames(Path(path), height, width), max_frames)


def _frames(path: Path, height: int | None, width: int | None) -> Iterator[np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        if (height or width) and arr.shape[1:3] != (height or arr.shape[1], width or arr.shape[2]):
            raise ValueError("--height/--width resizing is for videos and images; resize the .npy beforehand")
        yield from arr
    elif path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"{path} holds no images ({'/'.join(IMAGE_EXTS)})")
        for f in files:
            img = Image.open(f).convert("L")
            if height or width:
                img = img.resize((width or img.width, height or img.height), Image.BILINEAR)
            yield np.asarray(img)
    else:
        yield from iter_video(path, height, width)


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


def video_clips(spec: FolderSpec, sim: SimParams, *,
                chunk_planes: int | None = None) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator and the clip count for a folder of class folders of videos (only the
    window's frames are decoded: `read_video_window`; `chunk_planes` bounds the simulator's memory)."""
    info, plan = _plan(spec, "video-folder", VIDEO_EXTS, sim)
    needed = math.ceil(spec.num_planes / sim.planes_per_frame)

    def clips() -> Iterator[Clip]:
        for label, j, path, split in plan:
            frames = read_video_window(path, spec.height, spec.width, needed, spec.frame_stride, spec.pad_short)
            seed = clip_seed(spec.seed, label, j)
            spikes = simulate_spikes(frames, threshold=sim.threshold, planes_per_frame=sim.planes_per_frame,
                                     seed=seed, mismatch=sim.mismatch, dark_current=sim.dark_current,
                                     chunk_planes=chunk_planes)
            yield Clip(spikes=spikes[:spec.num_planes], label=label, caption=info.class_names[label], split=split,
                       source=str(path), clip_id=f"{path.parent.name}/{path.name}", sim_seed=seed)

    return info, clips(), len(plan)


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


def dat_clips(spec: FolderSpec) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The header, a lazy clip iterator and the clip count for a folder of class folders of ``.dat`` recordings."""
    info, plan = _plan(spec, "dat-folder", (".dat",), None)

    def clips() -> Iterator[Clip]:
        for label, _, path, split in plan:
            try:
                spikes = take_planes(path, spec)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from e
            yield Clip(spikes=spikes, label=label, caption=info.class_names[label], split=split,
                       source=str(path), clip_id=f"{path.parent.name}/{path.name}")

    return info, clips(), len(plan)
