"""Small torch helpers shared by the model library, evaluation and training (pure torch: no ray, no mlflow).

They live here, outside `spklip.model` (whose package import builds the whole model library) and outside
`spklip.train`, so that evaluation, checkpoints and the training loop use them without importing each other.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside a DDP / FSDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` for the block, then ``model.train(<the flag it had before>)``, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def maybe_autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to `dtype` on `device`'s type, or a context that changes nothing when `dtype` is None
    (full fp32; `spklip.train.loop.resolve_precision` picks the dtype)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. A CPU tensor bound for a CUDA device is pinned first and copied with ``non_blocking=True``,
    so the host does not wait for the GPU's queued work (the training loop fetches the next batch meanwhile); any
    other move is a plain ``.to``."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `tensors` holding a NaN or an infinity (one device sync in all)."""
    names = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    device = tensors[names[0]].device
    finite = torch.stack([torch.isfinite(tensors[k]).all().to(device) for k in names]).cpu()  # [T] bool
    return [k for k, ok in zip(names, finite.tolist()) if not ok]
