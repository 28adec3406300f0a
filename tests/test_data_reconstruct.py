"""TFP / TFI against slow per-pixel references and SpikeCV's documented example."""

import numpy as np
import pytest

from spklip.data.reconstruct import tfi, tfp


def slow_tfp(spikes, window):
    return np.stack([spikes[i:i + window].mean(0) for i in range(spikes.shape[0] - window + 1)])


def slow_tfi(spikes):
    n, h, w = spikes.shape
    out = np.zeros(spikes.shape, np.float32)
    for y in range(h):
        for x in range(w):
            times = np.flatnonzero(spikes[:, y, x])
            for t in range(n):
                later = times[times >= t]
                earlier = times[times < t]
                if len(later) and len(earlier):
                    out[t, y, x] = 1.0 / (later[0] - earlier[-1])
    return out


def test_tfp_and_tfi_match_slow_references():
    spikes = (np.random.default_rng(0).random((30, 4, 5)) < 0.25).astype(np.uint8)
    for window in (1, 5, 30):
        assert np.allclose(tfp(spikes, window), slow_tfp(spikes, window))
    assert np.allclose(tfi(spikes), slow_tfi(spikes))


def test_tfi_spikecv_example():
    # SpikeCV: spikes at 1, 5, 9, 13 of 16 planes -> ISI 4 inside, undefined at both ends.
    spikes = np.zeros((16, 1, 1), np.uint8)
    spikes[[1, 5, 9, 13]] = 1
    expected = np.array([0, 0] + [0.25] * 12 + [0, 0], np.float32)
    assert np.array_equal(tfi(spikes)[:, 0, 0], expected)
    assert tfp(spikes, 4)[:, 0, 0].tolist() == [0.25] * 13


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        tfp(np.zeros((3, 2, 2), np.uint8), 4)
