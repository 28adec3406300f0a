"""STCL: symmetric InfoNCE between spike-video and text embeddings (CLIP loss), multi-worker aware.

With ``world_size > 1`` the features of every rank are all-gathered *with gradients* (the local slice of the
gathered tensor is replaced by the rank's own tensor, whose autograd graph is intact; the other slices come from
an autograd-aware all_gather), so N workers with batch b compute the same loss and, after DDP's gradient
averaging, the same gradients as one worker with batch N*b. ``local_loss=True`` instead scores only the local rows
against all gathered columns (less memory, same gradients after averaging). Pure torch; no ray import.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from spklip.config.model import LossCfg


class _AllGather(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the all-reduced (summed) incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [world*b, D]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's features
        return grad.chunk(ctx.world, dim=0)[ctx.rank]


def gather_features(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """``[b, D] -> [world_size*b, D]`` in rank order, differentiable (identity for one worker)."""
    return x if world_size == 1 else _AllGather.apply(x)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the spike-text similarity matrix.

    Args:
        cfg: LossCfg (``max_logit_scale`` clamp, ``local_loss``).
        rank, world_size: this worker's place in the process group (torch.distributed must be initialised when
            world_size > 1).

    Call with ``loss(spike_features, text_features, logit_scale)`` (or ``loss(**model(spikes, texts))``);
    returns ``{"contrastive_loss": scalar}``. With N workers the gather's backward sums each feature's gradient
    over the ranks, so DDP's averaging of parameter gradients reproduces the single-worker gradient of the global
    batch, in both the full and the local-loss form (tests/test_loss.py checks it with 2 gloo processes).
    """

    def __init__(self, cfg: LossCfg | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg, self.rank, self.world_size = cfg or LossCfg(), rank, world_size

    def forward(self, spike_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        if spike_features.shape != text_features.shape:
            raise ValueError(f"spike and text features differ in shape: {list(spike_features.shape)} vs "
                             f"{list(text_features.shape)}")
        scale = logit_scale.clamp(max=self.cfg.max_logit_scale)
        all_spk = gather_features(spike_features, self.world_size)  # [N*b, D]
        all_txt = gather_features(text_features, self.world_size)
        if self.cfg.local_loss:
            b = spike_features.shape[0]
            logits_s = scale * spike_features @ all_txt.T  # [b, N*b]
            logits_t = scale * text_features @ all_spk.T
            labels = torch.arange(b, device=logits_s.device) + self.rank * b
            loss = (F.cross_entropy(logits_s, labels) + F.cross_entropy(logits_t, labels)) / 2
            return {"contrastive_loss": loss}
        logits = scale * all_spk @ all_txt.T  # [N*b, N*b], identical on every rank
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return {"contrastive_loss": loss}
