#!/usr/bin/env python
"""Write a video-folder tree of real image content moving in real .mp4 videos, for `spklip data build video-folder`.

    python tools/make_motion_videos.py --out /tmp/motion-videos --clips-per-class 20 --seed 0
    spklip data build video-folder --root /tmp/motion-videos --out /tmp/motion-shards --model spklip-tiny \
        --planes-per-frame 2 --unseen-classes 10 --seed 0

Layout: ``OUT/<object>_moves_<motion>/gGG_cCCC.mp4`` (the class name becomes "<object> moves <motion>"). The objects
are square regions of the two photographs shipped with scikit-learn (`sklearn.datasets.load_sample_images`:
china.jpg, flower.jpg), pasted at ``--object-size`` px over a background that is another patch of the same photos
(drawn per clip from a few regions, dimmed by ``--background-gain`` so the object stands out). Per clip: a random
background crop, a random speed in ``[--speed-min, --speed-max]`` px per frame, a random start position such that
the object stays inside the frame for the whole clip, and a global brightness gain in ``[1 - j, 1 + j]``
(``--brightness-jitter j``). Sub-pixel positions are rendered bilinearly. Everything comes from ``(seed, class,
clip)``, so the same arguments give the same frames (the encoded bytes depend on the encoder build). Encoded with
PyAV: libx264 (crf 18) if the installed PyAV has it, else mpeg4.

Different object pixels per split: each object region is cut into ``--instances`` disjoint tiles (`instance_boxes`:
no two tiles of any objects share a pixel), and clip ``c`` (from 0) of a class shows tile ``c mod instances``, its
group ``gGG`` in the file name (UCF101-style ``gGG_cCCC``). ``spklip data build video-folder``'s default
``--group-by`` keeps every group in one split; as every class of the tree has the same groups of the same sizes,
an instance lands in the same split (train, val or test) in every class, so no object pixels appear in two
splits. Backgrounds are drawn from the same regions in every split, and a held-out (``unseen``) class shows all
instances of its object. ``--instances 1`` pastes the whole region into every clip, the frames of the tool before
instances existed (pixels shared by all splits).

The default clip is 16 frames of 64 x 64, which ``--planes-per-frame 2`` turns into spklip-tiny's 32 planes.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

# (name, photo, top, left, side) of each object patch, in the photo's pixels (427 x 640).
OBJECTS = (
    ("roof", "china", 70, 150, 60),        # orange tiles of the top roof
    ("balcony", "china", 185, 180, 60),    # red columns and windows
    ("eaves", "china", 340, 220, 60),      # the lowest roof
    ("tree", "china", 330, 20, 80),        # foliage, bottom left
    ("pine", "china", 150, 560, 80),       # the tree on the right
    ("lake", "china", 225, 400, 70),       # water with the island
    ("dahlia", "flower", 85, 165, 280),    # the whole flower
    ("petals", "flower", 170, 260, 80),    # the flower's centre, close up
    ("bud", "flower", 365, 320, 62),       # the second flower, bottom
    ("leaf", "flower", 0, 480, 150),       # blurred leaves, top right
)
# (photo, top, bottom, left, right) regions a clip's background crop is drawn from.
BACKGROUNDS = (("flower", 0, 427, 0, 160), ("china", 300, 427, 330, 560), ("flower", 200, 427, 450, 640))
MOTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "still": (0, 0),
           "upleft": (-1, -1), "upright": (-1, 1), "downleft": (1, -1), "downright": (1, 1)}


@dataclass(frozen=True)
class VideoSpec:
    """What every clip of the tree shares."""

    frames: int = 16
    size: int = 64  # frame height = width
    object_size: int = 20
    speed_min: float = 1.0  # px per frame (diagonals: per axis)
    speed_max: float = 2.0
    brightness_jitter: float = 0.2
    background_gain: float = 0.5
    fps: int = 25
    instances: int = 5  # disjoint tiles of each object region; clip c shows instance c mod instances (its group)


def photos() -> dict[str, np.ndarray]:
    """``{"china": [427, 640, 3] float32 in [0, 1], "flower": ...}``."""
    data = load_sample_images()
    return {Path(f).stem: img.astype(np.float32) / 255.0 for f, img in zip(data.filenames, data.images)}


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``[H, W, 3]`` float -> ``[h, w, 3]`` float (area-like downscale with PIL's box filter)."""
    pil = Image.fromarray((img * 255).round().astype(np.uint8))
    return np.asarray(pil.resize((w, h), Image.BOX), dtype=np.float32) / 255.0


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two ``(top, left, side)`` squares share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def instance_boxes(name: str, instances: int) -> list[tuple[int, int, int]]:
    """``(top, left, side)`` in its photo of each of object `name`'s `instances` disjoint tiles: the first tiles, in
    raster order, of the smallest ``g x g`` grid over its region (``g >= ceil(sqrt(instances))``) that has enough
    tiles not overlapping a smaller object's region (the dahlia's tiles leave out the petals), so no two tiles of the
    table share a pixel. One instance is the whole region, as before instances existed (then objects may overlap)."""
    table = {n: (photo, top, left, side) for n, photo, top, left, side in OBJECTS}
    photo, top, left, side = table[name]
    if instances == 1:
        return [(top, left, side)]
    smaller = [box for n, (ph, *box) in table.items() if ph == photo and n != name and box[2] < side]
    grid = math.ceil(math.sqrt(instances))
    while True:
        tile = side // grid
        boxes = [(top + r * tile, left + c * tile, tile) for r in range(grid) for c in range(grid)]
        free = [b for b in boxes if not any(_overlap(b, o) for o in smaller)]
        if len(free) >= instances or tile <= 1:
            return free[:instances]
        grid += 1


def object_patches(pics: dict[str, np.ndarray], names: list[str], side: int,
                   instances: int = 1) -> dict[str, list[np.ndarray]]:
    """``{object: [instances x [side, side, 3] float]}``: each instance a disjoint tile of the object's region
    (`instance_boxes`), scaled to ``side``."""
    photo = {n: ph for n, ph, *_ in OBJECTS}
    return {n: [resize(pics[photo[n]][y:y + s, x:x + s], side, side) for y, x, s in instance_boxes(n, instances)]
            for n in names}


def background(pics: dict[str, np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (side 96-160 px of the photo) of one background region, scaled to ``size``."""
    photo, top, bottom, left, right = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    side = int(rng.integers(96, min(160, bottom - top, right - left) + 1))
    y, x = int(rng.integers(top, bottom - side + 1)), int(rng.integers(left, right - side + 1))
    return resize(pics[photo][y:y + side, x:x + side], size, size)


def paste(canvas: np.ndarray, patch: np.ndarray, y: float, x: float) -> None:
    """Paste `patch` ``[s, s, 3]`` over `canvas` ``[H, W, 3]`` at the float position (y, x), bilinear at the edges."""
    s = patch.shape[0]
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - iy, x - ix
    padded = np.zeros((s + 1, s + 1, 4), np.float32)  # [s+1, s+1, rgb + alpha]
    shifted = np.zeros_like(padded)
    padded[:s, :s, :3], padded[:s, :s, 3] = patch, 1.0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        shifted[dy:, dx:] += wgt * padded[:s + 1 - dy, :s + 1 - dx]
    h, w = canvas.shape[:2]
    y0, x0, y1, x1 = max(iy, 0), max(ix, 0), min(iy + s + 1, h), min(ix + s + 1, w)
    part = shifted[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
    alpha = part[..., 3:]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + part[..., :3]  # colour is premultiplied by alpha


def render_clip(patch: np.ndarray, bg: np.ndarray, motion: str, rng: np.random.Generator,
                spec: VideoSpec) -> np.ndarray:
    """``[frames, size, size, 3]`` uint8: `patch` moving with `motion` over `bg`."""
    dy, dx = MOTIONS[motion]
    speed = float(rng.uniform(spec.speed_min, spec.speed_max))
    travel = speed * (spec.frames - 1)
    room = spec.size - spec.object_size - 1  # top-left positions keeping the object inside the frame
    start = [float(rng.uniform(travel if d < 0 else 0.0, room - (travel if d > 0 else 0.0))) for d in (dy, dx)]
    gain = float(rng.uniform(1 - spec.brightness_jitter, 1 + spec.brightness_jitter))
    frames = np.empty((spec.frames, spec.size, spec.size, 3), np.uint8)
    for t in range(spec.frames):
        canvas = bg * spec.background_gain
        paste(canvas, patch, start[0] + dy * speed * t, start[1] + dx * speed * t)
        frames[t] = np.clip(canvas * gain * 255, 0, 255).round().astype(np.uint8)
    return frames


def pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "fast"}
        else:
            stream.bit_rate = 2_000_000
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())  # flush


def make_tree(out: Path, objects: list[str], motions: list[str], clips_per_class: int, spec: VideoSpec,
              seed: int) -> int:
    """Write every clip; returns the number of videos."""
    pics = photos()
    patches = object_patches(pics, objects, spec.object_size, spec.instances)
    codec = pick_codec()
    count = 0
    for oi, obj in enumerate(objects):
        for mi, motion in enumerate(motions):
            folder = out / f"{obj}_moves_{motion}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(clips_per_class):
                rng = np.random.default_rng([seed, oi, mi, i])
                inst = i % spec.instances  # the clip's group: one object instance, one split
                clip = render_clip(patches[obj][inst], background(pics, rng, spec.size), motion, rng, spec)
                write_mp4(folder / f"g{inst + 1:02d}_c{i + 1:03d}.mp4", clip, spec.fps, codec)
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder to write ROOT/<object>_moves_<motion>/<i>.mp4 into")
    p.add_argument("--objects", default=",".join(o[0] for o in OBJECTS), help="comma list of " +
                   ", ".join(o[0] for o in OBJECTS))
    p.add_argument("--motions", default="left,right,up,down,still", help="comma list of " + ", ".join(MOTIONS))
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--frames", type=int, default=VideoSpec.frames)
    p.add_argument("--size", type=int, default=VideoSpec.size, help="frame side in px")
    p.add_argument("--object-size", type=int, default=VideoSpec.object_size)
    p.add_argument("--speed-min", type=float, default=VideoSpec.speed_min)
    p.add_argument("--speed-max", type=float, default=VideoSpec.speed_max)
    p.add_argument("--brightness-jitter", type=float, default=VideoSpec.brightness_jitter)
    p.add_argument("--background-gain", type=float, default=VideoSpec.background_gain)
    p.add_argument("--instances", type=int, default=VideoSpec.instances, help="disjoint tiles of each object "
                   "region (its groups: build with the default --group-by, so no instance is in two splits)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    objects, motions = args.objects.split(","), args.motions.split(",")
    bad = sorted(set(objects) - {o[0] for o in OBJECTS}) + sorted(set(motions) - set(MOTIONS))
    if bad:
        p.error(f"unknown objects/motions: {', '.join(bad)}")
    spec = VideoSpec(frames=args.frames, size=args.size, object_size=args.object_size, speed_min=args.speed_min,
                     speed_max=args.speed_max, brightness_jitter=args.brightness_jitter,
                     background_gain=args.background_gain, instances=args.instances)
    if args.instances < 1 or min(box[2] for o in objects for box in instance_boxes(o, args.instances)) < 8:
        p.error("--instances must be >= 1 and leave tiles of at least 8 px of every object region")
    if spec.object_size + spec.speed_max * (spec.frames - 1) >= spec.size - 1 and any(m != "still" for m in motions):
        p.error("object size + speed-max x (frames - 1) must stay below the frame size")
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} exists and is not empty")
    n = make_tree(args.out, objects, motions, args.clips_per_class, spec, args.seed)
    print(f"wrote {n} videos ({len(objects)} objects x {len(motions)} motions x {args.clips_per_class}, "
          f"{spec.frames} frames of {spec.size}x{spec.size}, {pick_codec()}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
