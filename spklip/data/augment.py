"""Label-preserving augmentation of binary spike clips, on a whole batch at once (pure torch, any device).

Why: a spike clip is a few hundred sparse binary planes, so a model with many free per-plane weights memorises a
few hundred training clips (train loss ~0.04, val top-1 ~0.35 on moving digits) unless it is shown the same motion
at other places and times. Each transform keeps what a caption says (what moves and how):

* ``time_shift``: shift the clip by dt planes, |dt| <= time_shift; planes shifted in from outside are empty (no
  light). The sub-block layout then sees the motion at another phase.
* ``shift_px``: translate every plane by (dy, dx) pixels, |dy|, |dx| <= shift_px, empty outside.
* ``spike_dropout``: drop each spike with this probability (re-thinning: a dimmer scene or a higher threshold).
* ``hflip`` / ``vflip``: mirror with this probability and swap the direction words of the caption (``left`` <->
  ``right``, ``up`` <-> ``down``), so the flipped clip keeps a true caption. Off by default: mirroring changes
  what many objects are (a mirrored 3 is not a 3).

Every sample draws its own parameters from a `torch.Generator`; the same seed gives the same batch.
"""

from __future__ import annotations

import re

import torch

from spklip.config.augment import AugmentCfg

_SWAPS = {"h": {"left": "right", "right": "left", "leftward": "rightward", "rightward": "leftward"},
          "v": {"up": "down", "down": "up", "upward": "downward", "downward": "upward"}}


def shift_along(x: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift every sample of `x` by its own integer offset along `dim` (``out[i] = x[i - s]``), zeros shifted in.

    Args:
        x: ``[B, ...]`` tensor.
        shifts: ``[B]`` integer offsets (positive: towards higher indices).
        dim: the dimension to shift (>= 1).
    """
    n = x.shape[dim]
    src = torch.arange(n, device=x.device)[None] - shifts[:, None]  # [B, n] source index of each output index
    valid = (src >= 0) & (src < n)  # [B, n]
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = n
    index = src.clamp(0, n - 1).view(view).expand_as(x)  # [B, n] -> broadcast over the other dims of x
    return x.gather(dim, index) * valid.view(view).to(x.dtype)


def swap_words(text: str, axis: str) -> str:
    """Swap the direction words of one flip axis (``"h"``: left/right, ``"v"``: up/down), whole words only."""
    table = _SWAPS[axis]
    return re.sub(r"\b(" + "|".join(table) + r")\b", lambda m: table[m.group(1)], text)


def augment_batch(spikes: torch.Tensor, captions: list[str], cfg: AugmentCfg,
                  generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """Augment one training micro-batch.

    Args:
        spikes: ``[B, N, H, W]`` binary planes (uint8, bool or float), on any device.
        captions: the B captions (changed only by flips).
        cfg: which transforms and how strong (`AugmentCfg`); all zero returns the inputs unchanged.
        generator: seeded generator on ``spikes.device``.

    Returns:
        ``(spikes [B, N, H, W] of the same dtype, captions)``.
    """
    if not cfg.enabled:
        return spikes, captions
    b, dev = spikes.shape[0], spikes.device

    def offsets(limit: int) -> torch.Tensor:
        return torch.randint(-limit, limit + 1, (b,), generator=generator, device=dev)  # [B]

    out = spikes
    if cfg.time_shift:
        out = shift_along(out, offsets(cfg.time_shift), dim=1)
    if cfg.shift_px:
        out = shift_along(shift_along(out, offsets(cfg.shift_px), dim=2), offsets(cfg.shift_px), dim=3)
    if cfg.spike_dropout:
        keep = torch.rand(out.shape, generator=generator, device=dev) >= cfg.spike_dropout  # [B, N, H, W]
        out = out * keep.to(out.dtype)
    captions = list(captions)
    for axis, prob, dim in (("h", cfg.hflip, 3), ("v", cfg.vflip, 2)):
        if not prob:
            continue
        flip = torch.rand(b, generator=generator, device=dev) < prob  # [B]
        out = torch.where(flip[:, None, None, None], out.flip(dim), out)
        captions = [swap_words(c, axis) if f else c for c, f in zip(captions, flip.tolist())]
    return out, captions
