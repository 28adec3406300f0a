"""STCL: symmetric InfoNCE between spike-video and text embeddings (CLIP loss), multi-worker aware, with
class-aware (multi-positive) targets when captions repeat in a batch.

With ``world_size > 1`` the features of every rank are all-gathered *with gradients* (torch.distributed.nn's
autograd-aware all_gather, whose backward sums each slice's gradient over the ranks), so N workers with batch b
compute the same loss and, after DDP's gradient averaging, the same gradients as one worker with batch N*b.
``local_loss=True`` instead scores only the local rows against all gathered columns (less memory, same gradients
after averaging). Pure torch; no ray import.

Precision: the logits ``scale * S T^T`` and their softmax are computed in fp32 with autocast switched off
(`scaled_logits`), also inside a bf16 autocast region, where a matmul would otherwise run in bf16 (8 bits of
mantissa: at scale 100 a logit is off by up to ~0.4, more than the gap between a positive and a hard negative).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from spklip.config.model import LossCfg


def gather_features(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """``[b, D] -> [world_size*b, D]`` in rank order, differentiable (identity for one worker).

    torch.distributed.nn's all_gather (as open_clip) backpropagates by a reduce-scatter of the incoming gradients:
    each rank gets the sum over ranks of the gradient of its own slice (every rank's loss depends on every rank's
    features). torch 2.13 marks it deprecated (a FutureWarning) in favour of a private functional collective.
    """
    return x if world_size == 1 else torch.cat(dist_nn.all_gather(x), dim=0)  # world x [b, D] -> [world*b, D]


def gather_keys(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """``[b] -> [world_size*b]`` integer keys in rank order (no gradient; identity for one worker)."""
    if world_size == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(world_size)]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def caption_keys(captions: list[str]) -> torch.Tensor:
    """``[B]`` int64 keys equal exactly when the caption strings are equal (stable across processes)."""
    digest = [int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "little", signed=True)
              for c in captions]
    return torch.tensor(digest, dtype=torch.int64)


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off for `device`'s type (nothing to switch off on a type without autocast, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def scaled_logits(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * a @ b.T`` in fp32 with autocast disabled on `a`'s device type, whatever region it is called in
    (``[R, D] x [C, D] -> [R, C]``; gradients flow back to the inputs in their own dtypes)."""
    with no_autocast(a.device):
        return scale.float() * (a.float() @ b.float().T)


def soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j t_ij log softmax(logits_i)_j`` with ``t_i`` uniform over row i's positives.

    ``positives`` is a boolean matrix of the logits' shape with at least one True per row; with exactly the
    diagonal it is ``F.cross_entropy(logits, arange)``.
    """
    with no_autocast(logits.device):  # the softmax in fp32 too
        logits = logits.float()
        target = positives.to(logits.dtype)
        target = target / target.sum(dim=1, keepdim=True)  # [R, C] rows sum to 1
        return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over the spike-text similarity matrix, with one or several positives per row.

    Args:
        cfg: LossCfg (``max_logit_scale`` clamp, ``local_loss``, ``positives``).
        rank, world_size: this worker's place in the process group (torch.distributed must be initialised when
            world_size > 1).

    Call with ``loss(spike_features, text_features, logit_scale, keys=None)``; returns
    ``{"contrastive_loss": scalar}``. ``keys`` (``[b]`` int64, e.g. `caption_keys` or the class labels) marks
    pairs with the same key as positives (multi-positive InfoNCE: the target of row i is uniform over the
    columns with i's key, in both directions), so two clips of one class in a batch are not pushed apart. Without
    keys, or with all keys distinct, it is CLIP's loss (the diagonal). With N workers the keys are all-gathered
    like the features and the gather's backward sums each feature's gradient over the ranks, so DDP's averaging of
    parameter gradients reproduces the single-worker gradient of the global batch, in both the full and the
    local-loss form (tests/test_loss.py checks it with 2 gloo processes).
    """

    def __init__(self, cfg: LossCfg | None = None, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg, self.rank, self.world_size = cfg or LossCfg(), rank, world_size

    def forward(self, spike_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if spike_features.shape != text_features.shape:
            raise ValueError(f"spike and text features differ in shape: {list(spike_features.shape)} vs "
                             f"{list(text_features.shape)}")
        b = spike_features.shape[0]
        if keys is not None and keys.shape != (b,):
            raise ValueError(f"keys must be [{b}] (one per pair), got {list(keys.shape)}")
        scale = logit_scale.clamp(max=self.cfg.max_logit_scale)
        all_spk = gather_features(spike_features, self.world_size)  # [N*b, D]
        all_txt = gather_features(text_features, self.world_size)
        dev = spike_features.device
        if keys is None:
            all_keys = torch.arange(b * self.world_size, device=dev)  # distinct keys: the diagonal
            keys = all_keys[self.rank * b:(self.rank + 1) * b]
        else:
            keys = keys.to(dev)
            all_keys = gather_keys(keys, self.world_size)  # [N*b]
        if self.cfg.local_loss:
            positives = keys[:, None] == all_keys[None, :]  # [b, N*b]
            logits_s = scaled_logits(spike_features, all_txt, scale)  # [b, N*b], fp32
            logits_t = scaled_logits(text_features, all_spk, scale)
            loss = (soft_cross_entropy(logits_s, positives) + soft_cross_entropy(logits_t, positives)) / 2
            return {"contrastive_loss": loss}
        positives = all_keys[:, None] == all_keys[None, :]  # [N*b, N*b], symmetric
        logits = scaled_logits(all_spk, all_txt, scale)  # [N*b, N*b] fp32, identical on every rank
        loss = (soft_cross_entropy(logits, positives) + soft_cross_entropy(logits.T, positives)) / 2
        return {"contrastive_loss": loss}
