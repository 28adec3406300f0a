"""Tiny shard folders for the training tests (helpers, no tests of their own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spklip.data.build import build_dataset
from spklip.data.moving_digits import DigitsSpec
from spklip.data.shards import Clip, DatasetInfo, write_shards
from spklip.data.simulate import SimParams

MOTIONS = ["left", "right", "up", "down", "still", "blinks"]


def _clip(motion: str, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A bright square (side H/4) doing `motion` over N planes (H/4 pixels in all); spikes ~ Bernoulli(intensity)."""
    n, h, w = shape
    side = h // 4
    y0, x0 = rng.integers(side, h - 2 * side), rng.integers(side, w - 2 * side)
    t = np.arange(n)
    step = side * t // n
    dy = {"up": -step, "down": step}.get(motion, 0 * t)
    dx = {"left": -step, "right": step}.get(motion, 0 * t)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    ys, xs = (y0 + dy)[:, None, None], (x0 + dx)[:, None, None]
    inside = (rows >= ys) & (rows < ys + side) & (cols >= xs) & (cols < xs + side)  # [N, H, W]
    if motion == "blinks":
        inside &= (t % 4 < 2)[:, None, None]
    p = np.where(inside, 0.7, 0.03)
    return (rng.random(shape) < p).astype(np.uint8)


def write_motion_shards(out: Path, per_class: int = 12, unseen: tuple[int, ...] = (4, 5), seed: int = 0,
                        val_per_class: int = 4, shape: tuple[int, int, int] = (32, 64, 64),
                        test_per_class: int = 0) -> Path:
    """Six motion classes of a square; `unseen` labels go to the unseen split, others to train/val/test."""
    rng = np.random.default_rng(seed)
    names = [f"square moving {m}" if m not in ("still", "blinks") else f"square {m == 'still' and 'standing still' or 'blinking'}"
             for m in MOTIONS]

    def clips():
        for label, motion in enumerate(MOTIONS):
            for i in range(per_class):
                split = "unseen" if label in unseen else ("val" if i < val_per_class else "test"
                                                          if i < val_per_class + test_per_class else "train")
                yield Clip(_clip(motion, rng, shape), label, f"a spike video of a {names[label]}.", split,
                           f"synthetic/{motion}/{i}", f"{motion}-{i}", seed)

    info = DatasetInfo("synthetic-motion", names, list(unseen), tuple(shape), None, {"seed": seed})
    write_shards(clips(), out, info)
    return out


def write_digit_shards(out: Path, clips_per_class: int = 30, shape: tuple[int, int, int] = (16, 32, 32),
                       digits: tuple[int, ...] = (1, 7), motions: tuple[str, ...] = ("left", "right", "up"),
                       unseen: int = 2, seed: int = 0) -> Path:
    """A tiny moving-digits shard folder, built like `spklip data build moving-digits` (spklip.data.build):
    len(digits) x len(motions) classes."""
    spec = DigitsSpec(num_planes=shape[0], height=shape[1], width=shape[2], digits=digits, motions=motions,
                      clips_per_class=clips_per_class, unseen_classes=unseen, seed=seed)
    build_dataset(out, "moving-digits", spec, SimParams(seed=seed))
    return out
