"""Spike augmentation: the batched shifts equal a per-sample loop, zeros come in, it is seeded, flips keep captions true."""

import pytest
import torch

from spklip.config import AugmentCfg, ConfigError
from spklip.data.augment import augment_batch, shift_along, swap_words


def _slow_shift(x, shifts, dim):
    out = torch.zeros_like(x)
    for i, s in enumerate(shifts.tolist()):
        n = x.shape[dim]
        for t in range(n):
            src = t - s
            if 0 <= src < n:
                out[i].select(dim - 1, t).copy_(x[i].select(dim - 1, src))
    return out


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_shift_along_equals_a_per_sample_loop(dim):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 7, 6, 9, generator=g) < 0.3).to(torch.uint8)
    shifts = torch.tensor([-3, 0, 2, 7, -9])  # including shifts past the whole length
    got = shift_along(x, shifts, dim)
    assert got.dtype == torch.uint8
    assert torch.equal(got, _slow_shift(x, shifts, dim))


def test_augmentation_is_seeded_changes_clips_and_keeps_spike_counts_bounded():
    x = (torch.rand(16, 12, 10, 10) < 0.2).to(torch.uint8)
    cfg = AugmentCfg(time_shift=2, shift_px=3)
    a, _ = augment_batch(x, ["c"] * 16, cfg, torch.Generator().manual_seed(1))
    b, _ = augment_batch(x, ["c"] * 16, cfg, torch.Generator().manual_seed(1))
    c, _ = augment_batch(x, ["c"] * 16, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert set(a.unique().tolist()) <= {0, 1}
    assert (a.sum(dim=(1, 2, 3)) <= x.sum(dim=(1, 2, 3))).all()  # only shifts out, never invents spikes
    assert (a != x).flatten(1).any(1).sum() >= 10  # most clips moved


def test_disabled_augmentation_returns_the_batch_unchanged():
    x = (torch.rand(4, 6, 5, 5) < 0.5).to(torch.uint8)
    caps = ["the digit one moves left"] * 4
    out, out_caps = augment_batch(x, caps, AugmentCfg(time_shift=0, shift_px=0), torch.Generator())
    assert out is x and out_caps == caps


def test_spike_dropout_removes_about_that_fraction():
    x = torch.ones(8, 10, 20, 20, dtype=torch.uint8)
    out, _ = augment_batch(x, ["c"] * 8, AugmentCfg(time_shift=0, shift_px=0, spike_dropout=0.25),
                           torch.Generator().manual_seed(0))
    assert abs(out.float().mean().item() - 0.75) < 0.01


def test_flips_mirror_the_clip_and_swap_the_direction_words():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[:, :, 1, 0] = 1  # a spike in the left column
    caps = ["the digit two moves left", "a car drives upward, then right"]
    out, out_caps = augment_batch(x, caps, AugmentCfg(time_shift=0, shift_px=0, hflip=1.0),
                                  torch.Generator().manual_seed(0))
    assert torch.equal(out, x.flip(3)) and out[0, 0, 1, 3] == 1
    assert out_caps == ["the digit two moves right", "a car drives upward, then left"]
    assert swap_words("up or down, upward; update", "v") == "down or up, downward; update"


def test_bad_augmentation_settings_name_the_key():
    with pytest.raises(ConfigError, match="augment.time_shift"):
        AugmentCfg(time_shift=-1)
    with pytest.raises(ConfigError, match="augment.spike_dropout"):
        AugmentCfg(spike_dropout=1.0)
