"""Precise BatchNorm: recompute every BatchNorm's running statistics on training clips before evaluating.

Why: in train mode BatchNorm normalises with the batch's own statistics; in eval mode with running averages
(momentum 0.1) of past batches. SPKLIP's HSFE output enters the backbone's first BatchNorm dominated by a
clip-independent component (conv biases on sparse binary input: at initialisation the between-clip variance is
under 1% of the mean square), and that component moves at every optimiser step. The running mean lags the moving
component by ~10 steps, an error that is large next to the clip-dependent signal, so in eval mode all clips map to
almost the same embedding and prompt top-1 sits at chance even while the training loss falls (measured: eval-mode
cosine between clips 0.9-1.0 after 250 steps at constant lr, train-mode 0.1). Re-estimating the statistics of the
current weights with a plain average over a few training batches ("precise BN", Wu & Johnson 2021, as in fvcore
and pycls) removes the lag; docs/training.md has the numbers.

The function is pure torch: it runs ``encode_spikes`` with only the BatchNorm layers in train mode (dropout stays
off), under no_grad, so it touches nothing but BatchNorm buffers (parameters, gradients and RNG are unchanged).
Training is unaffected (train-mode BatchNorm never reads its running statistics).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from spklip.torchutil import eval_mode, maybe_autocast, unwrap


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm (1d/2d/3d, spikingjelly's included) that tracks running statistics."""
    return [m for m in unwrap(model).modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
                          autocast_dtype: torch.dtype | None = None) -> int:
    """Reset and re-estimate the running mean/var of every BatchNorm of `model` from `batches`.

    Each BatchNorm's statistics become the equal-weight average over the batches (momentum None) of the batch
    statistics it sees, i.e. what it would converge to if the weights stopped changing. Use batches of the
    training micro-batch size: batch variance depends on it.

    Args:
        model: A Spklip-like model (``encode_spikes``), possibly DDP-wrapped.
        batches: Dicts with ``spikes`` ``[B, N, H, W]``; the clips should be a random sample of the training split.
        device: Where the model lives.
        autocast_dtype: bf16 on GPU, None for fp32 (as in evaluation).

    Returns:
        The number of batches used (0 when the model has no BatchNorm or `batches` is empty: nothing changed;
        on an error the old statistics are restored before it propagates).
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    used, done = 0, False
    with eval_mode(unwrap(model)) as model:  # dropout off; only the BatchNorms run in train mode
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: every batch weighs the same
            bn.train()
        try:
            with maybe_autocast(device, autocast_dtype):
                for batch in batches:
                    model.encode_spikes(batch["spikes"].to(device))
                    used += 1
            done = True
        finally:
            for bn, (momentum, mean, var, tracked) in zip(bns, saved):
                bn.momentum = momentum
                if used == 0 or not done:  # nothing seen, or an error: keep the old statistics, not half-made ones
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                    bn.num_batches_tracked.copy_(tracked)
    return used
