"""HSFE: the hierarchical spike feature extractor (sub-block windowing + MTF + SA + residual trunk).

Every batch element and every sub-block go through each layer in one call: the K overlapping windows are cut with
``unfold`` and folded into the batch (``[B,N,H,W] -> [B*K, 2r+1, H, W]``), and the M MTF branches run as one conv
whose weights are masked to each branch's centred crop (equivalent to M convs on cropped inputs; a slow reference
with explicit loops is `spklip.model.reference.hsfe_reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import HsfeCfg


def cut_subblocks(spikes: torch.Tensor, window: int, k: int, step: int, offset: int) -> torch.Tensor:
    """Overlapping temporal windows folded into the batch.

    Args:
        spikes: ``[B, N, H, W]`` planes (any dtype).
        window: planes per sub-block (2r+1).
        k, step, offset: from `HsfeCfg.layout` (sub-block i starts at ``offset + i*step``).

    Returns:
        ``[B*K, window, H, W]``, sub-blocks of sample b at rows ``b*K ... b*K+K-1``.
    """
    b, _, h, w = spikes.shape
    span = spikes[:, offset: offset + (k - 1) * step + window]  # [B, (K-1)s+2r+1, H, W]
    blocks = span.unfold(1, window, step)  # [B, K, H, W, 2r+1] (a view)
    return blocks.permute(0, 1, 4, 2, 3).reshape(b * k, window, h, w)  # -> [B*K, 2r+1, H, W]


def _norm(ch: int, on: bool, zero: bool = False) -> nn.Module:
    """BatchNorm2d (gain 0 when `zero`: a residual branch that starts as the identity) or the identity."""
    if not on:
        return nn.Identity()
    bn = nn.BatchNorm2d(ch)
    if zero:
        nn.init.zeros_(bn.weight)
    return bn


class BasicBlock(nn.Module):
    """The authors' trunk block: conv-ReLU-conv-ReLU-conv, + x, ReLU (no normalisation); with ``norm`` each conv is
    followed by a BatchNorm, the last one zero-initialised so that the block starts as ReLU(x)."""

    def __init__(self, ch: int, norm: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm), nn.ReLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm, zero=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class BranchConv(nn.Conv2d):
    """All M MTF branch first-convs as one conv over the full window, each branch masked to its centred crop.

    Branch m (m = 0..M-1) sees planes ``[m*c, 2r+1-m*c)`` (c = channel_step): its weights on the other planes are
    held at zero by a fixed mask, so its output equals a conv over the cropped planes. ``num_taps`` tells the
    energy accounting how many weights are real.

    Photon conservation (``photon_conservation=True``) adds the paper's learnable temporal mask a_m[t] per branch,
    multiplied onto the crop's planes before the conv: ``a_m = L_m * softmax(theta_m)`` over the branch's L_m
    planes (zero outside its crop), so a_m >= 0 and sum_t a_m[t] = L_m. The mask can re-weight planes in time but
    not create or destroy light: a stationary input (constant expected spike count per plane) keeps its expected
    total spike count after masking, and the initial mask (theta = 0) is all ones, i.e. the raw crop.
    """

    def __init__(self, cfg: HsfeCfg):
        m, w, c = cfg.num_branches, cfg.window, cfg.channel_step
        super().__init__(w, m * cfg.branch_hidden, 3, stride=cfg.stride, padding=1)
        crop = torch.zeros(m, w)
        for i in range(m):
            crop[i, i * c: w - i * c] = 1.0
        self.register_buffer("crop", crop, persistent=False)  # [M, 2r+1]
        self.hidden, self.photon_conservation = cfg.branch_hidden, cfg.photon_conservation
        self.theta = nn.Parameter(torch.zeros(m, w)) if cfg.photon_conservation else None
        self.num_taps = cfg.branch_hidden * 9 * sum(w - 2 * i * c for i in range(m))  # real (unmasked) weights

    def temporal_mask(self) -> torch.Tensor:
        """``[M, 2r+1]`` per-branch plane weights: the crop indicator, or L_m*softmax(theta) within the crop."""
        if self.theta is None:
            return self.crop
        logits = self.theta.masked_fill(self.crop == 0, float("-inf"))
        return self.crop.sum(1, keepdim=True) * logits.softmax(dim=1)

    def effective_weight(self) -> torch.Tensor:
        mask = self.temporal_mask().repeat_interleave(self.hidden, 0)  # [M, 2r+1] -> [M*hidden, 2r+1]
        return self.weight * mask[:, :, None, None]  # [M*hidden, 2r+1, 3, 3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class HSFE(nn.Module):
    """Shared per-sub-block feature extractor: ``[B*K, 2r+1, H, W] -> [B*K, F, H/stride, W/stride]``."""

    def __init__(self, cfg: HsfeCfg):
        super().__init__()
        m, norm = cfg.num_branches, cfg.norm == "bn"
        self.cfg = cfg
        self.branch1 = BranchConv(cfg)
        self.norm1 = _norm(m * cfg.branch_hidden, norm)  # per-channel, so per branch: the crops stay separate
        self.branch2 = nn.Conv2d(m * cfg.branch_hidden, m, 3, padding=1, groups=m)  # each branch -> one map
        self.gate = (nn.Sequential(nn.Conv2d(m, 2 * m, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * m, m, 3, padding=1),
                                   nn.Sigmoid()) if cfg.spatial_attention else None)
        self.fuse = nn.Conv2d(m, cfg.features, 3, padding=1, bias=not norm)
        self.norm_fuse = _norm(cfg.features, norm)
        self.trunk = nn.Sequential(*(BasicBlock(cfg.features, norm) for _ in range(cfg.num_res_blocks)))

    def branch_maps(self, blocks: torch.Tensor) -> torch.Tensor:
        """MTF then SA: ``[B*K, 2r+1, H, W] -> [B*K, M, H', W']``, one map per branch (gated if SA is on)."""
        maps = self.branch2(F.relu(self.norm1(self.branch1(blocks))))  # [B*K, M*hidden, H', W'] -> [B*K, M, H', W']
        return maps * self.gate(maps) if self.gate is not None else maps

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        tmp = F.relu(self.norm_fuse(self.fuse(self.branch_maps(blocks))))  # [B*K, F, H', W']
        return self.trunk(tmp) + tmp


class SubblockEncoder(nn.Module):
    """Cuts a clip into its K sub-blocks and runs the shared HSFE on all of them at once."""

    def __init__(self, cfg: HsfeCfg, num_planes: int):
        super().__init__()
        self.window = cfg.window
        self.k, self.step, self.offset = cfg.layout(num_planes)
        self.hsfe = HSFE(cfg)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """``[B, N, H, W] -> [B*K, F, H', W']``."""
        return self.hsfe(cut_subblocks(spikes, self.window, self.k, self.step, self.offset))
