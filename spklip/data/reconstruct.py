"""The two standard spike-to-image reconstructions (SpikeCV ``tfp.py`` / ``tfi.py``), vectorised, O(N*H*W) memory.

* TFP (texture from playback): the firing rate in a sliding window of ``window`` planes, via one cumulative sum.
* TFI (texture from interval): 1 / inter-spike interval, using the interval (s_prev, s_next] that contains t,
  found with running max / min of spike indices forwards and backwards in time.

Both return float32 intensities in [0, 1] (multiply by 255 for SpikeCV's uint8 images).
"""

from __future__ import annotations

import numpy as np


def _as_spikes(spikes: np.ndarray) -> np.ndarray:
    arr = np.asarray(spikes)
    if arr.ndim != 3:
        raise ValueError(f"spikes must be [N, H, W], got shape {arr.shape}")
    return arr


def tfp(spikes: np.ndarray, window: int) -> np.ndarray:
    """Texture from playback: mean spike rate over each run of ``window`` consecutive planes.

    Args:
        spikes: ``[N, H, W]`` spikes in {0, 1}.
        window: planes per window (SpikeCV's ``2 * half_win_length + 1``); 1 <= window <= N.

    Returns:
        float32 ``[N - window + 1, H, W]``; output i covers planes ``[i, i + window)`` (centre ``i + window // 2``).
    """
    arr = _as_spikes(spikes)
    if not 1 <= window <= arr.shape[0]:
        raise ValueError(f"window must be in [1, N={arr.shape[0]}], got {window}")
    csum = np.zeros((arr.shape[0] + 1, *arr.shape[1:]), dtype=np.int32)  # [N+1, H, W], csum[t] = sum of t planes
    np.cumsum(arr, axis=0, dtype=np.int32, out=csum[1:])
    return ((csum[window:] - csum[:-window]) / np.float32(window)).astype(np.float32)


def tfi(spikes: np.ndarray) -> np.ndarray:
    """Texture from interval: ``1 / ISI`` of the inter-spike interval (s_prev, s_next] containing each plane t.

    Args:
        spikes: ``[N, H, W]`` spikes in {0, 1}.

    Returns:
        float32 ``[N, H, W]``; 0 where t has no earlier spike (before the first spike, and at it) or no later one.
    """
    arr = _as_spikes(spikes).astype(bool, copy=False)
    n = arr.shape[0]
    t = np.arange(n, dtype=np.int32)[:, None, None]  # [N, 1, 1]
    last_le = np.maximum.accumulate(np.where(arr, t, -1), axis=0)  # [N, H, W] last spike index <= t
    prev = np.concatenate([np.full((1, *arr.shape[1:]), -1, np.int32), last_le[:-1]])  # [N, H, W] last spike < t
    nxt = np.minimum.accumulate(np.where(arr, t, n)[::-1], axis=0)[::-1]  # [N, H, W] first spike index >= t
    valid = (prev >= 0) & (nxt < n)
    isi = np.where(valid, nxt - prev, 1)  # [N, H, W], 1 where invalid (masked below)
    return np.where(valid, 1.0 / isi, 0.0).astype(np.float32)
