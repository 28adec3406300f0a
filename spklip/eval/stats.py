"""Statistics over seeds: mean with a 95 % Student-t interval, and the difference of two settings (Welch).

Small-sample honest: with n seeds the interval uses t(0.975, n-1), so 3 seeds give a wide interval (t = 4.30) and
one seed gives none. Two settings differ "beyond noise" when the 95 % interval of their difference excludes 0.
Seeds that all give the same value (a saturated top-5, a deterministic energy) carry no information about the
noise: such a comparison says "no variation across N seeds" and gives no p-value, never "p = 0: beyond noise".
An accuracy over n clips also has a sampling interval of its own (`wilson`), beside the interval over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    ci95: float  # half-width of the 95 % interval of the mean (nan for fewer than 2 values)
    n: int

    @property
    def constant(self) -> bool:
        """Several seeds, all with the same value: the interval of 0 is no evidence of a small spread."""
        return self.n >= 2 and self.ci95 == 0

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        if self.constant:
            return f"{self.mean:.3f} (no variation across {self.n} seeds)"
        return f"{self.mean:.3f}" if self.n < 2 else f"{self.mean:.3f} ± {self.ci95:.3f}"


ROUND_OFF = 1e-12  # a spread below this fraction of the values' size is float round-off, not seed-to-seed variation


def _spread(arr: np.ndarray) -> float:
    """Sample standard deviation, 0 where it is only round-off (a deterministic energy summed in another order)."""
    sd = float(arr.std(ddof=1))
    return 0.0 if sd <= ROUND_OFF * max(1.0, float(np.abs(arr).max())) else sd


def _clean(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[~np.isnan(arr)]


def summarize(values: Iterable[float]) -> SeedSummary:
    """Mean and 95 % interval half-width over seeds (NaNs dropped)."""
    arr = _clean(values)
    if len(arr) == 0:
        return SeedSummary(float("nan"), float("nan"), 0)
    if len(arr) == 1:
        return SeedSummary(float(arr[0]), float("nan"), 1)
    half = stats.t.ppf(0.975, len(arr) - 1) * _spread(arr) / math.sqrt(len(arr))
    return SeedSummary(float(arr.mean()), float(half), len(arr))


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(a) - mean(b)
    ci95: float  # half-width of the Welch 95 % interval of the difference (nan if either side has < 2 values)
    p_value: float  # nan when there is no interval (one seed, or no variation at all)
    seeds: tuple[int, int] = (0, 0)  # values behind each side

    @property
    def no_variation(self) -> bool:
        """Both sides have >= 2 seeds and every seed of each side gave the same value: no noise estimate."""
        return min(self.seeds) >= 2 and self.ci95 == 0

    @property
    def beyond_noise(self) -> bool:
        return not math.isnan(self.ci95) and not self.no_variation and abs(self.diff) > self.ci95

    def __str__(self) -> str:
        if math.isnan(self.diff):
            return "n/a"
        if self.no_variation:
            return (f"{self.diff:+.3f} (no variation across {self.seeds[0]} + {self.seeds[1]} seeds: no interval or "
                    "p-value, cannot tell from noise)")
        if math.isnan(self.ci95):
            return f"{self.diff:+.3f} (one seed: no interval, cannot tell from noise)"
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        return f"{self.diff:+.3f} ± {self.ci95:.3f} (95 % CI, Welch p = {self.p_value:.2g}: {verdict})"


def difference(a: Iterable[float], b: Iterable[float]) -> Difference:
    """Welch's unequal-variance comparison of two settings' per-seed values."""
    xa, xb = _clean(a), _clean(b)
    seeds = (len(xa), len(xb))
    if len(xa) == 0 or len(xb) == 0:
        return Difference(float("nan"), float("nan"), float("nan"), seeds)
    diff = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Difference(diff, float("nan"), float("nan"), seeds)
    va, vb = _spread(xa) ** 2 / len(xa), _spread(xb) ** 2 / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:  # every seed of both sides alike: nothing to estimate the noise from
        return Difference(diff, 0.0, float("nan"), seeds)
    dof = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    p = float(2 * stats.t.sf(abs(diff) / se, dof))
    return Difference(diff, float(stats.t.ppf(0.975, dof) * se), p, seeds)


def wilson(accuracy: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval ``(low, high)`` of an accuracy measured on `n` clips (one run's sampling
    error over clips; it says nothing of the seed-to-seed spread). ``(nan, nan)`` without clips or a value."""
    if n <= 0 or accuracy != accuracy:
        return float("nan"), float("nan")
    p = min(max(float(accuracy), 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
