"""Tiny shard folders for the training tests (helpers, no tests of their own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spklip.data.shards import Clip, DatasetInfo, write_shards

MOTIONS = ["left", "right", "up", "down", "still", "blinks"]


def _clip(motion: str, rng: np.random.Generator, shape=(32, 64, 64)) -> np.ndarray:
    """A bright 16x16 square doing `motion` over N planes; spikes ~ Bernoulli(intensity)."""
    n, h, w = shape
    y0, x0 = rng.integers(16, h - 32), rng.integers(16, w - 32)
    t = np.arange(n)
    dy = {"up": -t // 2, "down": t // 2}.get(motion, 0 * t)
    dx = {"left": -t // 2, "right": t // 2}.get(motion, 0 * t)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    ys, xs = (y0 + dy)[:, None, None], (x0 + dx)[:, None, None]
    inside = (rows >= ys) & (rows < ys + 16) & (cols >= xs) & (cols < xs + 16)  # [N, H, W]
    if motion == "blinks":
        inside &= (t % 8 < 4)[:, None, None]
    p = np.where(inside, 0.7, 0.03)
    return (rng.random(shape) < p).astype(np.uint8)


def write_motion_shards(out: Path, per_class: int = 12, unseen: tuple[int, ...] = (4, 5), seed: int = 0,
                        val_per_class: int = 4) -> Path:
    """Six motion classes of a square; `unseen` labels go to the unseen split, others to train/val."""
    rng = np.random.default_rng(seed)
    names = [f"square moving {m}" if m not in ("still", "blinks") else f"square {m == 'still' and 'standing still' or 'blinking'}"
             for m in MOTIONS]

    def clips():
        for label, motion in enumerate(MOTIONS):
            for i in range(per_class):
                split = "unseen" if label in unseen else ("val" if i < val_per_class else "train")
                yield Clip(_clip(motion, rng), label, f"a spike video of a {names[label]}.", split,
                           f"synthetic/{motion}/{i}", f"{motion}-{i}", seed)

    info = DatasetInfo("synthetic-motion", names, list(unseen), (32, 64, 64), None, {"seed": seed})
    write_shards(clips(), out, info)
    return out
