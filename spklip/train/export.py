"""The deployable part of a trained model: its spike encoder, as logged to MLflow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpikeEncoder(nn.Module):
    """``[B, N, H, W]`` spikes (uint8/bool/float) -> ``[B, D]`` L2-normalised embeddings: ``Spklip.encode_spikes``
    without the text tower, so the logged model is small and needs no tokenizer. (`Spklip.spike_encoder()` returns
    a `SpikeEncoderView` of the whole model instead.) Logged models are pickled, so they reload by this class's
    import path: renaming or moving it makes earlier runs' models unloadable.

    Args:
        model: a trained `spklip.model.Spklip`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual
        self.shape = (model.cfg.num_planes, model.cfg.height, model.cfg.width)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        if spikes.dim() != 4 or tuple(spikes.shape[1:]) != self.shape:
            raise ValueError(f"spikes must be [B, {', '.join(map(str, self.shape))}], got {list(spikes.shape)}")
        x = spikes.to(next(self.visual.parameters()).dtype)  # [B, N, H, W] float
        return F.normalize(self.visual(x), dim=-1)  # [B, D]


def example_input(model: nn.Module, seed: int = 0) -> "numpy.ndarray":  # noqa: F821
    """One random binary clip ``[1, N, H, W]`` uint8 of the model's size (the MLflow input example)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, model.cfg.num_planes, model.cfg.height, model.cfg.width)
    return (torch.rand(shape, generator=gen) < 0.2).to(torch.uint8).numpy()
