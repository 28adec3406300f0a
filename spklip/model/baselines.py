"""Reviewer baselines with the same ``[B, N, H, W] -> [B, embed_dim]`` contract as the SPKLIP visual tower.

- ``tfp-resnet``: TFP (texture from playback): the mean of all N planes, one firing-rate image per clip, through
  the same CLIP-style ResNet (no HSFE, no temporal encoder).
- ``spike-rate-mlp``: per-pixel spike rates average-pooled to a ``RATE_GRID x RATE_GRID`` grid (at most the input
  size), flattened, through a two-layer MLP of width 4 * backbone.width.
- ``tfp-windows``: the order-aware, HSFE-free baseline: the K windows of the SPKLIP layout (``model.hsfe``'s
  num_subblocks / radius / step; its other keys are unused), each reduced to one spike-rate image (TFP: the mean
  of its 2r+1 planes), through the same ResNet (shared over the windows) and the same temporal transformer with
  positions (``model.temporal``). Against ``spklip`` it isolates what the MTF, the spatial attention and the
  residual trunk add; against ``tfp-resnet`` what reading the windows in order adds.
- ``conv3d``: a small 3D-convolution video network on the raw planes (C3D-style, no windows, no HSFE, no temporal
  transformer): a stem and one stage per ``model.backbone.layers`` entry (widths ``backbone.width * 2**i``, each
  stage halving time, height and width once, then ``layers[i] - 1`` more 3x3x3 convolutions), BatchNorm + ReLU,
  a global average pool and a linear projection to ``embed_dim``. Space and time are learned together from the
  spikes: the standard video answer to "why a hand-made temporal layout at all".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import ModelCfg
from spklip.model.backbone import ModifiedResNet
from spklip.model.temporal import TemporalEncoder

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


def window_rates(spikes: torch.Tensor, window: int, k: int, step: int, offset: int) -> torch.Tensor:
    """The K windows' spike-rate images, folded into the batch, in one pass (no loop over windows or samples).

    Args:
        spikes: ``[B, N, H, W]`` float planes.
        window: planes per window (2r+1).
        k, step, offset: from `HsfeCfg.layout` (window i holds planes ``[offset + i*step, offset + i*step + window)``).

    Returns:
        ``[B*K, 1, H, W]``, the windows of sample b at rows ``b*K ... b*K+K-1`` (as `hsfe.cut_subblocks`).
    """
    b, _, h, w = spikes.shape
    span = spikes[:, offset: offset + (k - 1) * step + window]  # [B, (K-1)s+L, H, W]
    blocks = span.unfold(1, window, step)  # [B, K, H, W, L] (a view: the overlapping windows are not copied)
    return blocks.mean(dim=-1).reshape(b * k, 1, h, w)  # mean over L -> [B, K, H, W] -> [B*K, 1, H, W]


class TfpWindows(nn.Module):
    """``[B, N, H, W] -> [B, embed_dim]``: K windowed spike-rate images -> shared ResNet -> temporal transformer."""

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        self.window = cfg.hsfe.window
        self.k, self.step, self.offset = cfg.hsfe.layout(cfg.num_planes)
        self.backbone = ModifiedResNet(cfg.backbone, 1, cfg.height, cfg.width, cfg.embed_dim)
        self.temporal = TemporalEncoder(cfg.temporal, cfg.embed_dim, self.k)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        b = spikes.shape[0]
        rates = window_rates(spikes, self.window, self.k, self.step, self.offset)  # [B*K, 1, H, W]
        frames = self.backbone(rates)  # [B*K, D]
        return self.temporal(frames.view(b, self.k, -1))  # [B*K, D] -> [B, K, D] -> [B, D]


def _conv3d_bn(cin: int, cout: int, stride: int | tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class Conv3dVideo(nn.Module):
    """``[B, N, H, W] -> [B, embed_dim]``: 3D convolutions over (time, height, width) of the spike planes."""

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        width = cfg.backbone.width
        layers: list[nn.Module] = [_conv3d_bn(1, width, (1, 2, 2))]  # stem: space only, time kept at N
        cin = width
        for i, blocks in enumerate(cfg.backbone.layers):
            cout = width * 2 ** i
            layers.append(_conv3d_bn(cin, cout, 2))  # halves time, height and width
            layers += [_conv3d_bn(cout, cout, 1) for _ in range(blocks - 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, cfg.embed_dim)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        x = self.features(spikes.unsqueeze(1))  # [B, N, H, W] -> [B, 1, N, H, W] -> [B, C, N', H', W']
        return self.proj(x.mean(dim=(2, 3, 4)))  # global average pool [B, C] -> [B, D]
