"""Spike-camera simulator: video frames -> binary spike planes by per-pixel integrate-and-fire.

Model (the physical spike camera, as in SpikeCV ``convert_video.py`` and Spike-Zoo): every pixel integrates its
light intensity (luminance in [0, 1]) plane by plane; the accumulator starts at a seeded uniform random value in
``[0, threshold)``; when it reaches ``threshold`` the pixel emits a spike and ``threshold`` is subtracted (the
residual charge is kept). Since the charge per plane is at most 1 and ``threshold >= 1``, a pixel fires at most once
per plane, and after n planes the spike count is exactly ``floor((initial + summed charge) / threshold)``.

Speed: one fused C kernel (`spklip/data/simkernel.c`, built once per machine with the system C compiler into a user cache, loaded
with ctypes) does every plane of a frame pair in one pass over the pixels, in cache-sized pixel blocks. It performs
the numpy loop's float64 operations in the same order (built with ``-ffp-contract=off``: no fused multiply-add, no
-ffast-math), so its bits are the loop's; where no compiler is found (or ``SPKLIP_SIMULATOR=numpy``) the same loop
runs in numpy, plane by plane, with the same result. `simulator_backend` says which one runs. The state is
sequential in time per pixel, so a closed form over many planes (a cumulative sum with threshold crossings) cannot
reproduce the loop's rounding; the kernel keeps the loop's arithmetic instead.

Memory: gray 8-bit and float64 frames go to the kernel as they are (it converts each value as it reads it and
checks the float ones' range); other frames are converted to float64 one at a time. Only the residual charge and
the previous frame ``[H, W]`` cross frame boundaries; the spikes of ``chunk_planes`` planes are held before they are handed on, so memory is
bounded by the chunk size, not the video length (at 1080p: ~50 MB of float64 state plus the chunk).

``planes_per_frame > 1`` emulates a 20-40 kHz sensor looking at a 25-30 fps video: between frames t and t+1 the
planes see ``f_t + (j / P) (f_{t+1} - f_t)``, j = 0..P-1 (linear interpolation); the last frame is held.

Optional, off by default: fixed-pattern threshold mismatch (per-pixel threshold ``threshold * (1 + mismatch * z)``,
z ~ N(0, 1), clipped to >= 1) and dark current (extra charge ``U(0, 2 * dark_current)`` per pixel and plane, so a
dark pixel fires at about ``dark_current / threshold`` spikes per plane). Every random draw comes from generators
spawned from ``seed``, consumed in plane order, so the output is bit-for-bit the same for a seed whatever the
chunking or the backend.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from spklip.data.simkernel import load_kernel, run_kernel

LUMA_BT601 = np.array([0.299, 0.587, 0.114])  # RGB -> luminance weights (the GRAY conversion SpikeCV uses)


@dataclass(frozen=True)
class SimParams:
    """Simulator settings; stored with every simulated dataset (shard metadata and per-clip columns)."""

    threshold: float = 2.0  # charge to fire; >= 1 so a pixel fires at most once per plane
    planes_per_frame: int = 1  # spike planes per video frame (linear interpolation between frames)
    seed: int = 0  # seeds the initial charge, the mismatch map and the dark current
    mismatch: float = 0.0  # relative std of the per-pixel threshold (fixed-pattern noise)
    dark_current: float = 0.0  # mean extra charge per pixel and plane

    def __post_init__(self):
        if not self.threshold >= 1.0:
            raise ValueError(f"threshold must be >= 1 (the brightest pixel's charge per plane) so that a pixel "
                             f"fires at most once per plane; got {self.threshold}")
        if int(self.planes_per_frame) != self.planes_per_frame or self.planes_per_frame < 1:
            raise ValueError(f"planes_per_frame must be an integer >= 1, got {self.planes_per_frame}")
        if not (math.isfinite(self.threshold) and math.isfinite(self.mismatch) and math.isfinite(self.dark_current)):
            raise ValueError(f"threshold, mismatch and dark_current must be finite, got {self.threshold}, "
                             f"{self.mismatch}, {self.dark_current}")
        if self.mismatch < 0 or self.dark_current < 0:
            raise ValueError(f"mismatch and dark_current must be >= 0, got {self.mismatch}, {self.dark_current}")
        if self.dark_current >= self.threshold:  # U(0, 2 dc) per plane: a dark pixel would fire on most planes
            raise ValueError(f"dark_current (--dark-current) must be below threshold ({self.threshold}), got "
                             f"{self.dark_current}: every pixel would fire from noise alone")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


def to_intensity(frames: np.ndarray, *, single: bool = False) -> np.ndarray:
    """Frames -> float64 luminance ``[n, H, W]`` in [0, 1].

    Args:
        frames: uint8 (0-255) or float in [0, 1]; ``[T, H, W]`` gray or ``[T, H, W, 3]`` RGB. With ``single=True``
            also one frame: ``[H, W]`` gray or ``[H, W, 3]`` RGB.
        single: interpret a 3-D array with a last axis of 3 as one RGB frame (used for iterator items).
    """
    arr = np.asarray(frames)
    if arr.dtype == np.uint8:
        arr = arr / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64, copy=False)
        if arr.size and not (arr.min() >= 0.0 and arr.max() <= 1.0):  # NaN propagates: fails too
            raise _range_error(arr)
    else:
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    if single and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        arr = arr[None]  # one frame -> [1, H, W(, 3)]
    if arr.ndim == 4:
        if arr.shape[-1] != 3:
            raise ValueError(f"4-D frames must be RGB [T, H, W, 3], got shape {arr.shape}")
        arr = arr @ LUMA_BT601  # [T, H, W, 3] -> [T, H, W]
    if arr.ndim != 3:
        raise ValueError(f"frames must be [T, H, W] or [T, H, W, 3], got shape {arr.shape}")
    return arr


def _range_error(arr: np.ndarray) -> ValueError:
    return ValueError(f"float frames must lie in [0, 1], got values in [{arr.min()}, {arr.max()}]"
                      "; divide 8-bit frames by 255 or pass them as uint8")


SPIKE_CHUNK_BYTES = 32 << 20  # the default chunk: as many planes as fit in 32 MiB of uint8 spikes (at most 256)
_DARK_BYTES = 32 << 20  # dark-current draws held at once (float64 planes)
RUN_PAIRS = 8  # frame pairs per kernel call: the call's overhead shared, few enough memory streams per pixel block


def simulator_backend() -> str:
    """``"c"`` (the fused kernel) or ``"numpy"`` (no C compiler, or ``SPKLIP_SIMULATOR=numpy``): same bits."""
    if os.environ.get("SPKLIP_SIMULATOR", "").lower() == "numpy":
        return "numpy"
    return "c" if load_kernel() is not None else "numpy"


def _iter_blocks(frames: np.ndarray | Iterable[np.ndarray], raw: bool) -> Iterator[np.ndarray]:
    """An array or an iterator of frames/chunks -> ``[m, H, W]`` intensity blocks, in order.

    With ``raw=False`` each block is one frame, float64 in [0, 1]. With ``raw=True`` (the C kernel runs) uint8 and
    float64 gray frames pass unconverted, floats unchecked (the kernel divides 8-bit values by 255 as numpy does
    and counts the float values outside [0, 1] while it reads them; the simulator then raises), and an array
    passes as one view (the caller slices it); RGB and other dtypes are converted one frame at a time."""
    def gray(arr: np.ndarray) -> bool:  # a [m, H, W] gray block the kernel can read as it is
        return raw and arr.ndim == 3 and arr.dtype in (np.uint8, np.float64)

    if isinstance(frames, np.ndarray):
        to_intensity(frames[:0])  # check dtype and shape up front
        if gray(frames):
            yield frames
            return
        for t in range(frames.shape[0]):
            yield to_intensity(frames[t:t + 1])
        return
    for item in frames:
        item = np.asarray(item)
        if item.ndim == 2:
            item = item[None]  # one gray frame -> [1, H, W]
        elif item.ndim == 3 and item.shape[-1] == 3:  # one RGB frame (as `to_intensity(single=True)` reads it)
            item = to_intensity(item, single=True)
        if gray(item):
            yield item
        else:
            for t in range(item.shape[0]):
                yield to_intensity(item[t:t + 1])


class SpikeSimulator:
    """Streaming integrate-and-fire state for one ``H x W`` sensor: feed intensity planes, get spikes.

    Args:
        params: simulator settings.
        height: sensor rows.
        width: sensor columns.
    """

    def __init__(self, params: SimParams, height: int, width: int):
        self.params, self.shape = params, (height, width)
        init_rng, mismatch_rng, self._dark_rng = (np.random.default_rng(s)
                                                  for s in np.random.SeedSequence(params.seed).spawn(3))
        self._theta_map = None  # [H, W] per-pixel threshold with mismatch, else the scalar threshold everywhere
        if params.mismatch > 0:
            theta = np.full(self.shape, float(params.threshold))
            self._theta_map = np.maximum(theta * (1.0 + params.mismatch * mismatch_rng.standard_normal(self.shape)),
                                         1.0)
        self.charge = init_rng.random(self.shape) * self._theta  # [H, W] charge, from a uniform start below threshold
        self._pending: np.ndarray | None = None  # last frame, waiting for its successor to interpolate
        self._weights = np.arange(params.planes_per_frame, dtype=np.float64) / params.planes_per_frame  # [P]
        self._kernel = load_kernel() if simulator_backend() == "c" else None
        self._scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the numpy loop's temporaries

    @property
    def _theta(self) -> np.ndarray | float:
        """The per-pixel map with mismatch, else the scalar threshold (the same values, no [H, W] array)."""
        return self._theta_map if self._theta_map is not None else float(self.params.threshold)

    @property
    def holding(self) -> bool:
        """A frame waits for its successor (its planes are not out yet)."""
        return self._pending is not None

    @property
    def theta(self) -> np.ndarray:
        """``[H, W]`` per-pixel threshold."""
        return self._theta_map if self._theta_map is not None else np.full(self.shape, float(self.params.threshold))

    @property
    def initial(self) -> np.ndarray:
        """``[H, W]`` starting charge, uniform below threshold (drawn again from the seed: it is not kept)."""
        init_rng = np.random.default_rng(np.random.SeedSequence(self.params.seed).spawn(3)[0])
        return init_rng.random(self.shape) * self._theta

    def fire(self, planes: np.ndarray) -> np.ndarray:
        """Integrate ``[n, H, W]`` per-plane intensities and return ``[n, H, W]`` uint8 spikes."""
        out = np.empty(planes.shape, dtype=np.uint8)
        zero = np.zeros(1)
        for n, plane in enumerate(planes):
            plane = np.ascontiguousarray(plane, dtype=np.float64)
            self._fire_pair(plane, plane, zero, out[n:n + 1])
        return out

    def step(self, frame: np.ndarray, out: np.ndarray) -> bool:
        """Take the next frame's ``[H, W]`` intensities (float in [0, 1], or uint8 read as value / 255); write the
        previous frame's P planes (interpolated towards this one) into ``out[:P]`` and return True, or return False
        for the first frame."""
        return self.step_many(frame[None], out) > 0

    def step_many(self, frames: np.ndarray, out: np.ndarray) -> int:
        """Take the next ``[m, H, W]`` frames (float in [0, 1], or uint8); write the P planes of every frame whose
        successor is now known (the held one, then all but the last of these) into ``out`` and return how many
        frames that was (m, or m - 1 at the start). One kernel call does the run of frames."""
        if frames.shape[1:] != self.shape:
            raise ValueError(f"frame size {frames.shape[1:]} differs from the first frames' {self.shape}")
        if not len(frames):
            return 0
        frames = np.ascontiguousarray(frames, dtype=np.uint8 if frames.dtype == np.uint8 else np.float64)
        p, done, bad = len(self._weights), 0, 0
        if self._pending is not None:  # the held frame towards the first new one
            bad += self._fire_pairs(self._pending, frames[:1], 1, out[:p])
            done = 1
        for k in range(0, len(frames) - 1, RUN_PAIRS):  # pairs (f_k, f_k+1) of the run, read in place
            m = min(RUN_PAIRS, len(frames) - 1 - k)
            bad += self._fire_pairs(frames[k:k + m], frames[k + 1:k + 1 + m], m, out[done * p:(done + m) * p])
            done += m
        if bad:
            held = [] if self._pending is None else [self._pending[None]]
            raise _range_error(next(f for f in (*held, *frames[:, None]) if not (f.min() >= 0.0 and f.max() <= 1.0)))
        self._pending = frames[-1:]  # [1, H, W]
        return done

    def step_last(self, out: np.ndarray) -> bool:
        """Write the last frame's P planes (held constant: it has no successor) into ``out[:P]``; False if none."""
        if self._pending is None:
            return False
        last, self._pending = self._pending, None
        if self._fire_pairs(last, last, 1, out[:len(self._weights)]):
            raise _range_error(last)
        return True

    def feed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Feed ``[m, H, W]`` frame intensities; returns the spikes of every frame whose successor is now known."""
        p = len(self._weights)
        out = np.empty((frames.shape[0] * p, *self.shape), dtype=np.uint8)  # [m*P, H, W]
        return out[:self.step_many(frames, out) * p]

    def finish(self) -> np.ndarray:
        """Emit the planes of the last frame (held constant: it has no successor)."""
        out = np.empty((len(self._weights), *self.shape), dtype=np.uint8)
        return out if self.step_last(out) else out[:0]

    def _fire_pairs(self, a: np.ndarray, b: np.ndarray, pairs: int, out: np.ndarray) -> int:
        """Integrate-and-fire the planes ``a_k + w (b_k - a_k)`` of `pairs` frame pairs (``a``, ``b``: ``[pairs, H,
        W]``, or ``[1, H, W]`` for one pair) into ``out [pairs * P, H, W]``, pair by pair, w in the weights.

        Frames are float64, or uint8 read as value / 255. Returns how many float values the C kernel found outside
        [0, 1] (the caller raises; the numpy loop's callers checked them before, and it returns 0)."""
        if self._kernel is None or self.params.dark_current > 0 or a.dtype != b.dtype:
            # numpy, dark current (drawn per pair) or mixed dtypes (8-bit as numpy's `frames / 255.0`: the bits the
            # kernel computes): pair by pair
            a, b = (f / 255.0 if f.dtype == np.uint8 else f for f in (a, b))
            p = len(self._weights)
            return sum(self._fire_pair(a[k], b[k], self._weights, out[k * p:(k + 1) * p]) for k in range(pairs))
        fire = self._kernel.fire_u8 if a.dtype == np.uint8 else self._kernel.fire
        theta = self._theta_map
        stride = a.shape[1] * a.shape[2] if pairs > 1 else 0  # elements from one pair's frame to the next's
        args = (a.ctypes.data, b.ctypes.data, stride, pairs, self.charge.ctypes.data,
                None if theta is None else theta.ctypes.data, float(self.params.threshold),
                self._weights.ctypes.data, len(self._weights), None, out.ctypes.data)
        return run_kernel(fire, args, a[0].size, a[0].size * pairs * len(self._weights))

    def _fire_pair(self, a: np.ndarray, b: np.ndarray, weights: np.ndarray, out: np.ndarray) -> int:
        """One float64 pair ``[H, W]``: the planes ``a + w (b - a)``, w in `weights`, into ``out [len(weights), H,
        W]``, with the dark current drawn in plane order, a few planes at a time (bounded memory, the same stream);
        the kernel or the numpy loop. Returns the kernel's out-of-range count."""
        dc, bad = self.params.dark_current, 0
        group = len(weights) if dc == 0 else max(1, min(len(weights), _DARK_BYTES // (8 * a.size)))
        for j in range(0, len(weights), group):
            w = weights[j:j + group]
            dark = None
            if dc > 0:
                dark = self._dark_rng.random((len(w), *self.shape))  # [g, H, W]
                dark *= 2.0 * dc
            if self._kernel is not None:
                theta = self._theta_map
                args = (a.ctypes.data, b.ctypes.data, 0, 1, self.charge.ctypes.data,
                        None if theta is None else theta.ctypes.data, float(self.params.threshold),
                        w.ctypes.data, len(w), None if dark is None else dark.ctypes.data,
                        out[j:j + len(w)].ctypes.data)
                bad += run_kernel(self._kernel.fire, args, a.size, a.size * len(w))
            else:
                self._fire_numpy(a, b, w, dark, out[j:j + len(w)])
        return bad

    def _fire_numpy(self, a: np.ndarray, b: np.ndarray, weights: np.ndarray, dark: np.ndarray | None,
                    out: np.ndarray) -> None:
        """The same loop in numpy: one in-place ``[H, W]`` pass per operation and plane (the kernel's reference)."""
        if self._scratch is None:
            self._scratch = np.empty(self.shape), np.empty(self.shape), np.empty(self.shape, dtype=bool)
        plane, reset, fire = self._scratch
        charge = self.charge
        theta = self._theta  # a scalar without mismatch: faster compares
        slope = b - a
        for j, w in enumerate(weights):
            if w:
                np.multiply(slope, w, out=plane)
                plane += a
            else:
                np.copyto(plane, a)
            if dark is not None:
                plane += dark[j]
                np.minimum(plane, 1.0, out=plane)  # the pixel saturates at the brightest charge
            charge += plane
            np.greater_equal(charge, theta, out=fire)
            np.multiply(fire, theta, out=reset)  # (a masked `where=` subtract is several times slower)
            charge -= reset
            out[j] = fire


def default_chunk_planes(height: int, width: int) -> int:
    """Planes per chunk when none is given: as many as fit in `SPIKE_CHUNK_BYTES` of spikes, 1 to 256."""
    return max(1, min(256, SPIKE_CHUNK_BYTES // max(1, height * width)))


def iter_simulate(frames: np.ndarray | Iterable[np.ndarray], *, threshold: float = 2.0, planes_per_frame: int = 1,
                  seed: int = 0, mismatch: float = 0.0, dark_current: float = 0.0,
                  chunk_planes: int | None = None) -> Iterator[np.ndarray]:
    """Stream spikes chunk by chunk: same arguments as `simulate_spikes`, yields ``[n_i, H, W]`` uint8 blocks.

    Each block holds ``max(1, chunk_planes // planes_per_frame)`` frames' planes (the last one fewer), so memory
    stays bounded by ``chunk_planes`` whatever the video length; long videos can be written straight to a ``.dat``
    file with `spklip.data.dat.write_dat`.
    """
    params = SimParams(threshold, planes_per_frame, seed, mismatch, dark_current)
    if chunk_planes is not None and chunk_planes < 1:
        raise ValueError(f"chunk_planes must be >= 1, got {chunk_planes}")
    p = params.planes_per_frame
    sim: SpikeSimulator | None = None
    out, filled, per_chunk = None, 0, 0
    for block in _iter_blocks(frames, raw=simulator_backend() == "c"):  # [m, H, W]
        if sim is None and len(block):
            sim = SpikeSimulator(params, *block.shape[1:])
            per_chunk = max(1, (chunk_planes or default_chunk_planes(*block.shape[1:])) // p) * p
        start = 0
        while start < len(block):
            if out is None:
                out, filled = np.empty((per_chunk, *sim.shape), dtype=np.uint8), 0  # [chunk, H, W], handed on whole
            take = (per_chunk - filled) // p + (not sim.holding)  # frames whose planes fit in this chunk
            filled += sim.step_many(block[start:start + take], out[filled:]) * p
            start += take
            if filled == per_chunk:
                yield out
                out = None
    if sim is None:
        raise ValueError("no frames to simulate (empty video or array)")
    if out is None:
        out, filled = np.empty((p, *sim.shape), dtype=np.uint8), 0
    sim.step_last(out[filled:])
    yield out[:filled + p]


def simulate_spikes(frames: np.ndarray | Iterable[np.ndarray], *, threshold: float = 2.0, planes_per_frame: int = 1,
                    seed: int = 0, mismatch: float = 0.0, dark_current: float = 0.0,
                    chunk_planes: int | None = None) -> np.ndarray:
    """Simulate a spike camera watching a video.

    Args:
        frames: ``[T, H, W]`` gray or ``[T, H, W, 3]`` RGB frames, uint8 or float in [0, 1]; or an iterator of
            frames (``[H, W]``, ``[H, W, 3]``) or chunks (``[n, H, W]``, ``[n, H, W, 3]``), consumed lazily.
        threshold: charge needed to fire (>= 1; SpikeCV uses 5, Spike-Zoo 2).
        planes_per_frame: spike planes per frame, linearly interpolated between consecutive frames.
        seed: seeds the initial charge (and mismatch / dark current); equal seeds give identical spikes.
        mismatch: relative std of a per-pixel threshold (fixed-pattern noise); 0 = off.
        dark_current: mean extra charge per pixel and plane; 0 = off.
        chunk_planes: planes simulated per block (bounds memory); default: 32 MiB of spikes (`default_chunk_planes`).

    Returns:
        uint8 ``[T * planes_per_frame, H, W]`` spikes in {0, 1}.

    Raises:
        ValueError: bad parameters, float frames outside [0, 1], a wrong shape or dtype, or no frames.
    """
    chunks = list(iter_simulate(frames, threshold=threshold, planes_per_frame=planes_per_frame, seed=seed,
                                mismatch=mismatch, dark_current=dark_current, chunk_planes=chunk_planes))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
