"""Reviewer baselines with the same ``[B, N, H, W] -> [B, embed_dim]`` contract as the SPKLIP visual tower.

- ``tfp-resnet``: TFP (texture from playback): the mean of all N planes, one firing-rate image per clip, through
  the same CLIP-style ResNet (no HSFE, no temporal encoder).
- ``spike-rate-mlp``: per-pixel spike rates average-pooled to a ``RATE_GRID x RATE_GRID`` grid (at most the input
  size), flattened, through a two-layer MLP of width 4 * backbone.width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import ModelCfg
from spklip.model.backbone import ModifiedResNet

RATE_GRID = 16


class TfpResNet(nn.Module):
    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.backbone = ModifiedResNet(cfg.backbone, 1, cfg.height, cfg.width, cfg.embed_dim)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.backbone(spikes.mean(dim=1, keepdim=True))  # TFP image [B, 1, H, W] -> [B, D]


class SpikeRateMLP(nn.Module):
    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.grid = (min(RATE_GRID, cfg.height), min(RATE_GRID, cfg.width))
        hidden = 4 * cfg.backbone.width
        self.mlp = nn.Sequential(nn.Linear(self.grid[0] * self.grid[1], hidden), nn.GELU(),
                                 nn.Linear(hidden, cfg.embed_dim))

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        rates = F.adaptive_avg_pool2d(spikes.mean(dim=1, keepdim=True), self.grid)  # [B, 1, g, g]
        return self.mlp(rates.flatten(1))  # [B, g*g] -> [B, D]
