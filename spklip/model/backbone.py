"""CLIP-style modified ResNet: 3-conv stem, bottlenecks with average-pool downsampling, attention pooling.

Applied to all B*K sub-block feature maps in one call. The attention pool's positional table has h*w+1 rows for
the real final feature map (the authors allocated (h*w)**2+1 rows, 10 M unused parameters at paper size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import BackboneCfg
from spklip.model.layers import Attention, checkpointed


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> avgpool(stride) -> 1x1 (x4 expansion); shortcut avgpool -> 1x1 when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(conv_bn(cin, planes, 1), nn.ReLU(), conv_bn(planes, planes, 3), nn.ReLU(),
                                  nn.AvgPool2d(stride) if stride > 1 else nn.Identity(), conv_bn(planes, cout, 1))
        self.short = (nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(), conv_bn(cin, cout, 1))
                      if stride > 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


def resnet_output_size(height: int, width: int, num_stages: int) -> tuple[int, int]:
    """Final feature-map size: stem conv stride 2 (ceil), avgpool 2 (floor), then stages 2.. halve (floor)."""
    h, w = (height + 1) // 2 // 2, (width + 1) // 2 // 2
    for _ in range(num_stages - 1):
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"a {height}x{width} input is too small for a {num_stages}-stage ResNet "
                         f"(needs at least {2 ** (num_stages + 1)} pixels per side)")
    return h, w


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: the mean token queries all h*w+1 tokens -> ``[B, out_dim]``."""

    def __init__(self, h: int, w: int, dim: int, heads: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(h * w + 1, dim) / dim ** 0.5)  # (h*w+1) rows, the authors' bug fixed
        self.attn = Attention(dim, heads, out_dim=out_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.pos  # [B, h*w+1, C]
        return self.attn(tokens[:, :1], tokens)[:, 0]  # [B, 1, out] -> [B, out]


class ModifiedResNet(nn.Module):
    """``[B, in_ch, H, W] -> [B, out_dim]``.

    ``checkpointing`` (``cfg.checkpointing``): in training the stem and each stage are checkpointed segments (only
    their inputs and outputs are kept for the backward, `spklip.model.layers.checkpointed`).
    """

    def __init__(self, cfg: BackboneCfg, in_ch: int, height: int, width: int, out_dim: int):
        super().__init__()
        wd = cfg.width
        self.stem = nn.Sequential(conv_bn(in_ch, wd // 2, 3, stride=2), nn.ReLU(), conv_bn(wd // 2, wd // 2), nn.ReLU(),
                                  conv_bn(wd // 2, wd), nn.ReLU(), nn.AvgPool2d(2))
        stages, cin = [], wd
        for i, n in enumerate(cfg.layers):
            planes = wd * 2 ** i
            blocks = [Bottleneck(cin, planes, stride=1 if i == 0 else 2)]
            cin = planes * Bottleneck.expansion
            blocks += [Bottleneck(cin, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        h, w = resnet_output_size(height, width, len(cfg.layers))
        self.pool = AttentionPool2d(h, w, cin, cfg.heads, out_dim, cfg.attn_dropout)
        self.checkpointing = cfg.checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            x = checkpointed(self.stem, x)
            for stage in self.stages:
                x = checkpointed(stage, x)
            return self.pool(x)
        return self.pool(self.stages(self.stem(x)))
