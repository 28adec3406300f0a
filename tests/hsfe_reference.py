"""Slow reference HSFE, written the authors' way: a Python loop over samples, sub-blocks and branches.

Uses the *same parameters* as a vectorised `HSFE`, but slices every window and every branch crop explicitly and
convolves with the cropped weights, one sample and one sub-block at a time. Tests assert equality with the batched
path; benchmarks/bench_model.py times both. Test code: it lives in tests/, not in the library.

`hsfe_subblock_loop` is the other reference: the module's own layers called once per sub-block (the authors' grouping,
one sub-block per call), the baseline for the cache-sized chunks of `HSFE.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spklip.model.hsfe import HSFE


def hsfe_reference_block(hsfe: HSFE, block: torch.Tensor) -> torch.Tensor:
    """One sub-block ``[1, 2r+1, H, W] -> [1, F, H', W']`` with an explicit loop over the M branches."""
    cfg, conv1, conv2 = hsfe.cfg, hsfe.branch1, hsfe.branch2
    w, c, hid = cfg.window, cfg.channel_step, cfg.branch_hidden
    mask = conv1.temporal_mask()  # [M, 2r+1]
    maps = []
    for m in range(cfg.num_branches):
        lo, hi = m * c, w - m * c
        crop = block[:, lo:hi] * mask[m, lo:hi, None, None]  # centred crop of L_m planes, temporally weighted
        rows = slice(m * hid, (m + 1) * hid)
        h = F.conv2d(crop, conv1.weight[rows, lo:hi], conv1.bias[rows], stride=cfg.stride, padding=1)
        if isinstance(hsfe.norm1, torch.nn.BatchNorm2d):  # eval-mode BN: a fixed affine map per channel
            bn = hsfe.norm1
            h = F.batch_norm(h, bn.running_mean[rows], bn.running_var[rows], bn.weight[rows], bn.bias[rows],
                             training=False, eps=bn.eps)
        h = F.relu(h)
        maps.append(F.conv2d(h, conv2.weight[m:m + 1], conv2.bias[m:m + 1], padding=1))  # [1, 1, H', W']
    x = torch.cat(maps, dim=1)  # [1, M, H', W']
    if hsfe.gate is not None:
        x = x * hsfe.gate(x)
    tmp = F.relu(hsfe.norm_fuse(hsfe.fuse(x)))
    return hsfe.trunk(tmp) + tmp


def hsfe_reference(hsfe: HSFE, spikes: torch.Tensor, num_planes: int) -> torch.Tensor:
    """``[B, N, H, W] -> [B*K, F, H', W']`` by looping over samples and sub-blocks (row order b*K + i)."""
    k, step, offset = hsfe.cfg.layout(num_planes)
    out = []
    for b in range(spikes.shape[0]):
        for i in range(k):
            start = offset + i * step
            out.append(hsfe_reference_block(hsfe, spikes[b:b + 1, start:start + hsfe.cfg.window]))
    return torch.cat(out, dim=0)


def hsfe_subblock_loop(hsfe: HSFE, blocks: torch.Tensor) -> torch.Tensor:
    """``[B*K, 2r+1, H, W] -> [B*K, F, H', W']``, one `HSFE.extract` call per sub-block (a loop over all B*K)."""
    return torch.cat([hsfe.extract(blocks[i:i + 1]) for i in range(blocks.shape[0])], dim=0)
