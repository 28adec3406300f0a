"""Spike-camera simulator: video frames -> binary spike planes by per-pixel integrate-and-fire.

Model (the physical spike camera, as in SpikeCV ``convert_video.py`` and Spike-Zoo): every pixel integrates its
light intensity (luminance in [0, 1]) plane by plane; the accumulator starts at a seeded uniform random value in
``[0, threshold)``; when it reaches ``threshold`` the pixel emits a spike and ``threshold`` is subtracted (the
residual charge is kept). Since the charge per plane is at most 1 and ``threshold >= 1``, a pixel fires at most once
per plane, and after n planes the spike count is exactly ``floor((initial + summed charge) / threshold)``.

The simulator steps through time (the state is sequential) with in-place operations vectorised over pixels; only the
residual charge ``[H, W]`` crosses chunk boundaries, so memory is bounded by the chunk size, not the video length.
The tests check the count identity above and a textbook per-plane reference.

``planes_per_frame > 1`` emulates a 20-40 kHz sensor looking at a 25-30 fps video: between frames t and t+1 the
planes see ``f_t + (j / P) (f_{t+1} - f_t)``, j = 0..P-1 (linear interpolation); the last frame is held.

Optional, off by default: fixed-pattern threshold mismatch (per-pixel threshold ``threshold * (1 + mismatch * z)``,
z ~ N(0, 1), clipped to >= 1) and dark current (extra charge ``U(0, 2 * dark_current)`` per pixel and plane, so a
dark pixel fires at about ``dark_current / threshold`` spikes per plane). Every random draw comes from generators
spawned from ``seed``, consumed in plane order, so the output is bit-for-bit the same for a seed whatever the
chunking.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

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
        if self.mismatch < 0 or self.dark_current < 0:
            raise ValueError(f"mismatch and dark_current must be >= 0, got {self.mismatch}, {self.dark_current}")

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
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise ValueError(f"float frames must lie in [0, 1], got values in [{np.nanmin(arr)}, {np.nanmax(arr)}]"
                             "; divide 8-bit frames by 255 or pass them as uint8")
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


def _frame_chunks(frames: np.ndarray | Iterable[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """Normalise an array or an iterator of frames/chunks into float64 ``[<=chunk, H, W]`` blocks."""
    if isinstance(frames, np.ndarray):
        for start in range(0, frames.shape[0], chunk):
            yield to_intensity(frames[start:start + chunk])
        return
    buf: list[np.ndarray] = []
    held = 0
    for item in frames:
        block = to_intensity(item, single=True)
        buf.append(block)
        held += block.shape[0]
        if held >= chunk:
            yield np.concatenate(buf)
            buf, held = [], 0
    if buf:
        yield np.concatenate(buf)


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
        theta = np.full(self.shape, float(params.threshold))
        if params.mismatch > 0:
            theta = np.maximum(theta * (1.0 + params.mismatch * mismatch_rng.standard_normal(self.shape)), 1.0)
        self.theta = theta  # [H, W] per-pixel threshold
        self.initial = init_rng.random(self.shape) * theta  # [H, W] starting charge, uniform below threshold
        self.charge = self.initial.copy()  # [H, W] residual charge carried between chunks
        self._pending: np.ndarray | None = None  # last frame, waiting for its successor to interpolate

    def fire(self, planes: np.ndarray) -> np.ndarray:
        """Integrate ``[n, H, W]`` per-plane intensities and return ``[n, H, W]`` uint8 spikes."""
        return self._integrate(planes, np.zeros_like(planes), np.zeros(1))

    def _integrate(self, start: np.ndarray, slope: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Integrate-and-fire over the planes ``start[t] + w * slope[t]`` for t in frames, w in ``weights``.

        The loop runs over time only (the state is sequential); each step is a handful of in-place operations on
        an ``[H, W]`` plane, vectorised over pixels and cache-resident, which measured ~4x faster than an
        equivalent cumulative sum over ``[n, H, W]`` blocks (numpy's cumsum along axis 0 is slow).
        """
        m, p = start.shape[0], len(weights)
        out = np.zeros((m * p, *self.shape), dtype=np.uint8)  # [m*P, H, W]
        dark = None
        if self.params.dark_current > 0:  # drawn per chunk in plane order: the same stream whatever the chunking
            dark = self._dark_rng.random(out.shape) * (2.0 * self.params.dark_current)  # [m*P, H, W]
        charge, plane, reset = self.charge, np.empty(self.shape), np.empty(self.shape)
        theta = self.theta if self.params.mismatch > 0 else float(self.params.threshold)  # scalar: faster compares
        fire = np.empty(self.shape, dtype=bool)
        for t in range(m):
            for j, w in enumerate(weights):
                if w:
                    np.multiply(slope[t], w, out=plane)
                    plane += start[t]
                else:
                    np.copyto(plane, start[t])
                if dark is not None:
                    plane += dark[t * p + j]
                    np.minimum(plane, 1.0, out=plane)  # the pixel saturates at the brightest charge
                charge += plane
                np.greater_equal(charge, theta, out=fire)
                np.multiply(fire, theta, out=reset)  # (a masked `where=` subtract is several times slower)
                charge -= reset
                out[t * p + j] = fire
        return out

    def feed_frames(self, frames: np.ndarray) -> np.ndarray:
        """Feed ``[m, H, W]`` frame intensities; returns the spikes of every frame whose successor is now known."""
        if frames.shape[1:] != self.shape:
            raise ValueError(f"frame size {frames.shape[1:]} differs from the first frames' {self.shape}")
        seq = frames if self._pending is None else np.concatenate([self._pending[None], frames])  # [m(+1), H, W]
        self._pending = seq[-1]
        return self._interpolate_and_fire(seq[:-1], seq[1:])

    def finish(self) -> np.ndarray:
        """Emit the planes of the last frame (held constant: it has no successor)."""
        if self._pending is None:
            return np.zeros((0, *self.shape), dtype=np.uint8)
        last, self._pending = self._pending[None], None
        return self._interpolate_and_fire(last, last)

    def _interpolate_and_fire(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Planes between frames a[t] and b[t]: ``a + (j / P) (b - a)``, j = 0..P-1, then integrate them."""
        if a.shape[0] == 0:
            return np.zeros((0, *self.shape), dtype=np.uint8)
        weights = np.arange(self.params.planes_per_frame, dtype=np.float64) / self.params.planes_per_frame  # [P]
        return self._integrate(a, b - a, weights)  # [m*P, H, W]


def iter_simulate(frames: np.ndarray | Iterable[np.ndarray], *, threshold: float = 2.0, planes_per_frame: int = 1,
                  seed: int = 0, mismatch: float = 0.0, dark_current: float = 0.0,
                  chunk_planes: int = 64) -> Iterator[np.ndarray]:
    """Stream spikes chunk by chunk: same arguments as `simulate_spikes`, yields ``[n_i, H, W]`` uint8 blocks.

    Memory stays bounded by ``chunk_planes`` planes whatever the video length, so long videos can be written
    straight to a ``.dat`` file with `spklip.data.dat.write_dat`.
    """
    params = SimParams(threshold, planes_per_frame, seed, mismatch, dark_current)
    sim: SpikeSimulator | None = None
    for block in _frame_chunks(frames, max(1, chunk_planes // params.planes_per_frame)):
        if sim is None:
            sim = SpikeSimulator(params, *block.shape[1:])
        out = sim.feed_frames(block)
        if out.shape[0]:
            yield out
    if sim is None:
        raise ValueError("no frames to simulate (empty video or array)")
    yield sim.finish()


def simulate_spikes(frames: np.ndarray | Iterable[np.ndarray], *, threshold: float = 2.0, planes_per_frame: int = 1,
                    seed: int = 0, mismatch: float = 0.0, dark_current: float = 0.0,
                    chunk_planes: int = 64) -> np.ndarray:
    """Simulate a spike camera watching a video.

    Args:
        frames: ``[T, H, W]`` gray or ``[T, H, W, 3]`` RGB frames, uint8 or float in [0, 1]; or an iterator of
            frames (``[H, W]``, ``[H, W, 3]``) or chunks (``[n, H, W]``, ``[n, H, W, 3]``), consumed lazily.
        threshold: charge needed to fire (>= 1; SpikeCV uses 5, Spike-Zoo 2).
        planes_per_frame: spike planes per frame, linearly interpolated between consecutive frames.
        seed: seeds the initial charge (and mismatch / dark current); equal seeds give identical spikes.
        mismatch: relative std of a per-pixel threshold (fixed-pattern noise); 0 = off.
        dark_current: mean extra charge per pixel and plane; 0 = off.
        chunk_planes: planes processed at once (bounds memory).

    Returns:
        uint8 ``[T * planes_per_frame, H, W]`` spikes in {0, 1}.

    Raises:
        ValueError: bad parameters, float frames outside [0, 1], a wrong shape or dtype, or no frames.
    """
    return np.concatenate(list(iter_simulate(frames, threshold=threshold, planes_per_frame=planes_per_frame,
                                             seed=seed, mismatch=mismatch, dark_current=dark_current,
                                             chunk_planes=chunk_planes)))
