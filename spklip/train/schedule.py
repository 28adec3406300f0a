"""Learning-rate schedule: linear warmup then cosine decay to ``min_lr_ratio * lr`` (pure torch)."""

from __future__ import annotations

import math

import torch

from spklip.config import OptimCfg


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based).

    Args:
        step: Optimiser steps already taken.
        total_steps: Planned optimiser steps of the whole run.
        warmup_steps: Linear ramp from ~0 to 1 over this many steps.
        min_lr_ratio: The cosine ends at this fraction of the base rate.

    Returns:
        The factor in ``[min_lr_ratio, 1]`` (during warmup it may be below ``min_lr_ratio``).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: OptimCfg) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases, norms, gains and the logit scale get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimCfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_factor`; call ``scheduler.step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
