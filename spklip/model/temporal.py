"""Temporal encoder over the K sub-block tokens, and the ANN visual encoder that ties HSFE, ResNet and it together."""

from __future__ import annotations

import torch
from torch import nn

from spklip.config.model import ModelCfg, TemporalCfg
from spklip.model.backbone import ModifiedResNet
from spklip.model.hsfe import SubblockEncoder
from spklip.model.layers import Transformer


class TemporalEncoder(nn.Module):
    """``[B, K, D] -> [B, D]``: transformer over the sub-block tokens, then mean or CLS pooling.

    With ``pos_embed=False`` there is no positional information, so (as in the authors' code) the output is
    invariant to the order of the K tokens.
    """

    def __init__(self, cfg: TemporalCfg, dim: int, num_tokens: int):
        super().__init__()
        scale = dim ** -0.5  # CLIP's init scale for class and positional embeddings
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * scale) if cfg.pool == "cls" else None
        n = num_tokens + (self.cls is not None)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * scale) if cfg.pos_embed else None
        self.ln_pre = nn.LayerNorm(dim)  # as CLIP's ViT: tokens (+ positions) are normalised before the blocks
        self.transformer = Transformer(dim, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # [B, 1+K, D]
        if self.pos is not None:
            tokens = tokens + self.pos
        out = self.norm(self.transformer(self.ln_pre(tokens)))
        return out[:, 0] if self.cls is not None else out.mean(dim=1)


class SpikeVisualEncoder(nn.Module):
    """The ANN SPKLIP visual tower: ``[B, N, H, W] -> [B, embed_dim]`` (not normalised)."""

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        hs = cfg.hsfe
        self.subblocks = SubblockEncoder(hs, cfg.num_planes)
        fh, fw = -(-cfg.height // hs.stride), -(-cfg.width // hs.stride)  # HSFE output size (ceil division)
        self.backbone = ModifiedResNet(cfg.backbone, hs.features, fh, fw, cfg.embed_dim)
        self.temporal = TemporalEncoder(cfg.temporal, cfg.embed_dim, self.subblocks.k)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        b = spikes.shape[0]
        frames = self.backbone(self.subblocks(spikes))  # [B*K, F, H', W'] -> [B*K, D]
        return self.temporal(frames.view(b, self.subblocks.k, -1))  # [B*K, D] -> [B, K, D] -> [B, D]
