"""HSFE: the hierarchical spike feature extractor (sub-block windowing + MTF + SA + residual trunk).

Every batch element and every sub-block go through each layer in one call (on CPU: in a few cache-sized chunks,
below): the K overlapping windows are cut with ``unfold`` and folded into the batch (``[B,N,H,W] -> [B*K, 2r+1, H,
W]``), and the M MTF branches run as one conv whose weights are masked to each branch's centred crop (equivalent to
M convs on cropped inputs; a slow reference with explicit loops is `tests/hsfe_reference.py`).

Grouping (`HSFE.forward`): on a CPU, one batch of all B*K sub-blocks makes every activation B*K times a sub-block's
(paper size: 197 MB per 64x240x320 map at B=2, K=5) and the convs memory-bound, while one sub-block's (19.7 MB)
stays in the last-level cache between layers. So the sub-blocks run through the whole extractor in chunks whose
largest activation fits a cache budget (`HsfeCfg.chunk_mb`; "auto": the cache read from sysfs on CPU, one batch on
a GPU, where a big batch is what keeps the device busy), in channels_last on CPU without autograd
(`HsfeCfg.memory_format`: oneDNN's native layout; 1.32-1.44x faster at the paper's size, measured), with each
conv's ReLU or residual add fused into the conv's oneDNN call there (`spklip.model.fused`, `HsfeCfg.fusion`). The
output is the same as one batch (tested to 1e-5, gradients too); a BatchNorm that is training normalises over the
whole batch, so it always gets one batch, as does `torch.jit.trace` (a trace would freeze the chunk count of the
traced batch size).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import HsfeCfg
from spklip.model.fused import extract_fused, fusable
from spklip.model.layers import checkpointed

CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_CACHE_MB = 32.0  # when sysfs says nothing (not Linux, a container without /sys)
# A VM may report the host's whole L3 (the 2-vCPU dev box: 480 MiB), of which it gets a small share; no CPU gives a
# core more than ~16 MiB of L3 (servers 2-4 MiB/core, AMD's X3D 12), so the budget is capped at that per CPU sharing it
MAX_CACHE_MB_PER_CPU = 16.0


def _cpu_count(cpu_list: str) -> int:
    """Number of CPUs in a sysfs list such as ``0-3,8,10-11``."""
    ranges = [part.split("-") for part in cpu_list.strip().split(",") if part]
    return sum(int(r[-1]) - int(r[0]) + 1 for r in ranges)


@lru_cache(maxsize=None)
def cpu_cache_mb(cache_dir: Path = CPU_CACHE_DIR) -> float:
    """MiB of the largest data cache of cpu0 (L3, else L2) usable by this process, from `cache_dir` (sysfs).

    ``min(size, MAX_CACHE_MB_PER_CPU * CPUs sharing it)``; `FALLBACK_CACHE_MB` when nothing can be read.
    """
    best = None  # (level, MiB, sharing CPUs)
    for index in sorted(cache_dir.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
            mib = float(size[:-1]) / 1024 if size.endswith("K") else float(size.rstrip("M"))
            shared = _cpu_count((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if best is None or level > best[0]:
            best = (level, mib, shared)
    if best is None:
        return FALLBACK_CACHE_MB
    return min(best[1], MAX_CACHE_MB_PER_CPU * max(best[2], 1))


def chunk_size(num_blocks: int, block_bytes: int, budget_bytes: float) -> int:
    """Sub-blocks per call so that one call's largest activation (`block_bytes` per sub-block) fits the budget.

    At least 1 (a sub-block is not split in space), at most `num_blocks` (one batch).
    """
    return max(1, min(num_blocks, int(budget_bytes // max(block_bytes, 1))))


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
        # in-place ReLUs and residual add: a conv's or BN's backward does not need its output, so autograd allows it,
        # and at the paper size each saves a pass over a 19 MB map (the elementwise ops are ~12 % of the HSFE's time)
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm), nn.ReLU(True),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm), nn.ReLU(True),
                                  nn.Conv2d(ch, ch, 3, padding=1, bias=not norm), _norm(ch, norm, zero=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).add_(x).relu_()


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
    """Shared per-sub-block feature extractor: ``[B*K, 2r+1, H, W] -> [B*K, F, H/stride, W/stride]``.

    ``chunk_budget`` (default ``cfg.chunk_mb`` MiB): bytes one call's largest activation may take, "auto" (the CPU's
    cache, one batch elsewhere) or 0 (one batch); in bytes so that a small input can be cut into chunks too.
    ``force_channels_last``: run the maps in channels_last whatever ``cfg.memory_format`` says (set by the training
    loop's ``train.channels_last``, `spklip.model.spklip.Spklip.use_channels_last`).
    ``checkpointing`` (``cfg.checkpointing``): in training, keep only the input, the head's output and each trunk
    block's output for the backward and recompute the rest (`spklip.model.layers.checkpointed`).
    """

    def __init__(self, cfg: HsfeCfg, chunk_budget: float | Literal["auto"] | None = None):
        super().__init__()
        m, norm = cfg.num_branches, cfg.norm == "bn"
        self.cfg = cfg
        if chunk_budget is None:
            chunk_budget = "auto" if cfg.chunk_mb == "auto" else cfg.chunk_mb * 2 ** 20
        self.chunk_budget = chunk_budget
        self.branch1 = BranchConv(cfg)
        self.norm1 = _norm(m * cfg.branch_hidden, norm)  # per-channel, so per branch: the crops stay separate
        self.branch2 = nn.Conv2d(m * cfg.branch_hidden, m, 3, padding=1, groups=m)  # each branch -> one map
        self.gate = (nn.Sequential(nn.Conv2d(m, 2 * m, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * m, m, 3, padding=1),
                                   nn.Sigmoid()) if cfg.spatial_attention else None)
        self.fuse = nn.Conv2d(m, cfg.features, 3, padding=1, bias=not norm)
        self.norm_fuse = _norm(cfg.features, norm)
        self.trunk = nn.Sequential(*(BasicBlock(cfg.features, norm) for _ in range(cfg.num_res_blocks)))
        self.force_channels_last = False
        self.checkpointing = cfg.checkpointing

    def branch_maps(self, blocks: torch.Tensor) -> torch.Tensor:
        """MTF then SA: ``[B*K, 2r+1, H, W] -> [B*K, M, H', W']``, one map per branch (gated if SA is on)."""
        maps = self.branch2(F.relu(self.norm1(self.branch1(blocks))))  # [B*K, M*hidden, H', W'] -> [B*K, M, H', W']
        return maps * self.gate(maps) if self.gate is not None else maps

    def head(self, blocks: torch.Tensor) -> torch.Tensor:
        """MTF, SA and the fuse conv: ``[n, 2r+1, H, W] -> [n, F, H', W']`` (the trunk's input)."""
        return F.relu(self.norm_fuse(self.fuse(self.branch_maps(blocks))), inplace=True)

    def extract(self, blocks: torch.Tensor) -> torch.Tensor:
        """All given sub-blocks in one call per layer: ``[n, 2r+1, H, W] -> [n, F, H', W']``."""
        if self.checkpointing and torch.is_grad_enabled():  # head and each trunk block a checkpointed segment
            tmp = checkpointed(self.head, blocks, owner=self)
            out = tmp
            for block in self.trunk:
                out = checkpointed(block, out)
            return out + tmp
        tmp = self.head(blocks)  # [n, F, H', W']
        out = self.trunk(tmp)  # [n, F, H', W']
        if torch.is_grad_enabled() or out is tmp:  # the trunk's last ReLU needs its output for the backward
            return out + tmp
        return out.add_(tmp)  # no autograd (evaluation, encoding): in place, no new map

    def extract_fused(self, blocks: torch.Tensor) -> torch.Tensor:
        """`extract` with each conv's ReLU / residual add fused into it (CPU inference only: `fused.fusable`)."""
        return extract_fused(self, blocks)

    def block_bytes(self, blocks: torch.Tensor) -> int:
        """Bytes of one sub-block's largest activation: the input window or the widest map at ``H' x W'``."""
        cfg, (_, c, h, w) = self.cfg, blocks.shape
        widest = max(cfg.num_branches * cfg.branch_hidden, cfg.features, 2 * cfg.num_branches)
        maps = widest * math.ceil(h / cfg.stride) * math.ceil(w / cfg.stride)
        return max(c * h * w, maps) * self.fuse.weight.element_size()

    def subblocks_per_call(self, blocks: torch.Tensor) -> int:
        """How many of the ``blocks.shape[0]`` sub-blocks one call takes (see the module docstring)."""
        n, budget = blocks.shape[0], self.chunk_budget
        batch_norm_training = self.training and self.cfg.norm == "bn"  # chunks would change the batch statistics
        if budget == 0 or batch_norm_training or (budget == "auto" and blocks.device.type != "cpu"):
            return n
        if budget == "auto":
            budget = cpu_cache_mb() * 2 ** 20
        return chunk_size(n, self.block_bytes(blocks), budget)

    def channels_last(self, blocks: torch.Tensor) -> bool:
        """Whether the maps run in channels_last (NHWC): `HsfeCfg.memory_format`; "auto" = on CPU without autograd
        (evaluation, encoding). Training stays NCHW under "auto": with channels_last the 2-worker DDP learning test
        (tests/test_train_ray.py) learned clearly worse at the same seeds (val top-1 0.69 against 0.94), although a
        single process gives the same outputs and gradients (tests/test_model_hsfe.py); the cause is not found."""
        fmt = self.cfg.memory_format
        return self.force_channels_last or fmt == "channels_last" or (fmt == "auto" and blocks.device.type == "cpu" and not torch.is_grad_enabled())

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        if self.channels_last(blocks):  # the input's layout carries through every conv (the weights need not move)
            blocks = blocks.contiguous(memory_format=torch.channels_last)  # [B*K, 2r+1, H, W], NHWC strides
        extract = self.extract_fused if fusable(self, blocks) else self.extract  # same output (fused.py)
        if torch.jit.is_tracing():  # a traced graph would freeze the chunk count of the traced batch size
            return extract(blocks)
        per_call = self.subblocks_per_call(blocks)
        if per_call >= blocks.shape[0]:
            return extract(blocks)
        # A loop over cache-sized chunks, not over batch elements in the sense the team bans: chunks are only cut
        # when one batch's activations exceed the cache, so each iteration is a whole extractor pass over maps of
        # ~the cache's size (paper size: ~0.8 s of convs per sub-block against ~30 module calls of Python), and the
        # count is ceil(B*K / per_call) (10 at the paper's batch 2). Each chunk's maps stay in the cache between
        # layers; the last layer's outputs are concatenated once.
        return torch.cat([extract(part) for part in blocks.split(per_call)], dim=0)  # [B*K, F, H', W']


class SubblockEncoder(nn.Module):
    """Cuts a clip into its K sub-blocks and runs the shared HSFE on them (in cache-sized chunks on CPU)."""

    def __init__(self, cfg: HsfeCfg, num_planes: int):
        super().__init__()
        self.window = cfg.window
        self.k, self.step, self.offset = cfg.layout(num_planes)
        self.hsfe = HSFE(cfg)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """``[B, N, H, W] -> [B*K, F, H', W']``."""
        return self.hsfe(cut_subblocks(spikes, self.window, self.k, self.step, self.offset))
