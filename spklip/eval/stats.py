"""Statistics over seeds: mean with a 95 % Student-t interval, and the difference of two settings (Welch).

Small-sample honest: with n seeds the interval uses t(0.975, n-1), so 3 seeds give a wide interval (t = 4.30) and
one seed gives none. Two settings differ "beyond noise" when the 95 % interval of their difference excludes 0.
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

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.3f}" if self.n < 2 else f"{self.mean:.3f} ± {self.ci95:.3f}"


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
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return SeedSummary(float(arr.mean()), float(half), len(arr))


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(a) - mean(b)
    ci95: float  # half-width of the Welch 95 % interval of the difference (nan if either side has < 2 values)
    p_value: float

    @property
    def beyond_noise(self) -> bool:
        return not math.isnan(self.ci95) and abs(self.diff) > self.ci95

    def __str__(self) -> str:
        if math.isnan(self.ci95):
            return f"{self.diff:+.3f} (one seed: no interval, cannot tell from noise)"
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        return f"{self.diff:+.3f} ± {self.ci95:.3f} (95 % CI, Welch p = {self.p_value:.2g}: {verdict})"


def difference(a: Iterable[float], b: Iterable[float]) -> Difference:
    """Welch's unequal-variance comparison of two settings' per-seed values."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) == 0 or len(xb) == 0:
        return Difference(float("nan"), float("nan"), float("nan"))
    diff = float(xa.mean() - xb.mean())
    if len(xa) < 2 or len(xb) < 2:
        return Difference(diff, float("nan"), float("nan"))
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, 0.0, 0.0 if diff else 1.0)
    dof = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    p = float(2 * stats.t.sf(abs(diff) / se, dof))
    return Difference(diff, float(stats.t.ppf(0.975, dof) * se), p)
