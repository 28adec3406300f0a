"""The ANN visual tower of SPKLIP: HSFE -> ModifiedResNet -> temporal transformer, spikes to one embedding."""

from __future__ import annotations

import torch
from torch import nn

from spklip.config.model import ModelCfg
from spklip.model.backbone import ModifiedResNet
from spklip.model.hsfe import SubblockEncoder
from spklip.model.temporal import TemporalEncoder


class AnnVisualEncoder(nn.Module):
    """The ANN SPKLIP visual tower: ``[B, N, H, W] -> [B, embed_dim]`` (not normalised).

    Sub-blocks through the HSFE (`subblocks`), each sub-block's map through the ModifiedResNet (`backbone`), the K
    tokens through the temporal transformer (`temporal`). The spiking counterpart is
    `spklip.model.fsve.SpikingVisualEncoder`; `build_visual_tower` picks one by ``ModelCfg``.
    """

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
