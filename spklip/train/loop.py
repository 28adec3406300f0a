"""The pure-torch training loop (no ray import): micro-batches -> optimiser steps, with hooks for reporting.

The loop knows nothing about workers or storage. The Ray layer (worker.py) hands it a `Loop`, an iterable of
batches per epoch and two hooks: ``on_step(state, metrics)`` after every optimiser step and
``on_epoch_end(state)`` after every epoch. Resuming mid-epoch skips the batches already consumed, so a resumed
run sees the same data, RNG and schedule as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from spklip.config import ExperimentConfig
from spklip.data.augment import augment_batch
from spklip.loss import caption_keys
from spklip.torchutil import maybe_autocast, unwrap
from spklip.train.checkpoint import TrainState
from spklip.train.schedule import build_optimizer, build_scheduler
from spklip.train.timing import Phases

Batch = dict[str, Any]  # {"spikes": uint8 [B, N, H, W], "caption": list[str], "label": int64 [B], ...}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on CUDA and full fp32 (None) elsewhere."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class Loop:
    """Everything one optimiser step needs; build it with `Loop.create`."""

    cfg: ExperimentConfig
    model: torch.nn.Module  # possibly DDP-wrapped
    loss_fn: Callable[..., dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    total_steps: int
    autocast_dtype: torch.dtype | None = None
    rank: int = 0  # seeds this worker's augmentation stream
    phases: Phases = field(default_factory=Phases)  # seconds waiting for ``data`` and in ``step`` (fwd/bwd/opt)

    @classmethod
    def create(cls, cfg: ExperimentConfig, model: torch.nn.Module, loss_fn, device: torch.device,
               total_steps: int, rank: int = 0) -> "Loop":
        """AdamW + warmup/cosine over `total_steps` optimiser steps on `model` (already on `device`)."""
        optimizer = build_optimizer(unwrap(model), cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
        return cls(cfg, model, loss_fn, optimizer, scheduler, device, total_steps,
                   resolve_precision(cfg.train.precision, device), rank)

    def augment(self, batch: Batch, epoch: int, index: int) -> tuple[torch.Tensor, list[str]]:
        """The micro-batch's spikes on the device and its captions, augmented by ``cfg.augment``.

        The augmentation of micro-batch `index` of `epoch` on this rank is a pure function of
        ``(train.seed, rank, epoch, index)``, so a resumed run augments exactly like an uninterrupted one.
        """
        spikes = batch["spikes"].to(self.device, non_blocking=True)  # [B, N, H, W] uint8
        captions = list(batch["caption"])
        if not self.cfg.augment.enabled:
            return spikes, captions
        seed = int(np.random.SeedSequence([self.cfg.train.seed, self.rank, epoch, index]).generate_state(1)[0])
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return augment_batch(spikes, captions, self.cfg.augment, gen)

    def pair_keys(self, batch: Batch, captions: list[str]) -> torch.Tensor | None:
        """Keys that mark a batch's positive pairs for the loss (``loss.positives``); None: only the diagonal."""
        mode = self.cfg.loss.positives
        if mode == "caption":
            return caption_keys(captions).to(self.device)
        if mode == "label":
            return torch.as_tensor(batch["label"]).to(self.device)
        return None

    def autocast(self):
        return maybe_autocast(self.device, self.autocast_dtype)

    def micro_step(self, batch: Batch, scale: float, sync: bool, epoch: int = 0, index: int = 0) -> dict[str, float]:
        """Forward + backward of micro-batch `index` of `epoch` (augmented); gradients are all-reduced only when
        `sync` (DDP)."""
        spikes, captions = self.augment(batch, epoch, index)
        sync_ctx = contextlib.nullcontext() if sync or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync_ctx:
            with self.autocast():
                out = self.model(spikes, captions)
                terms = self.loss(out, self.pair_keys(batch, captions))
                loss = sum(v for k, v in terms.items() if k.endswith("_loss"))
            (loss * scale).backward()
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics["loss"] = float(loss.detach())
        metrics["logit_scale"] = float(out["logit_scale"].detach())
        return metrics

    def loss(self, out: dict[str, torch.Tensor], keys: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The loss terms of one forward. Spike features ``[T, B, D]`` (an FSVE with ``loss_per_step``, TET) get the
        loss at each of the T time steps, averaged; ``[B, D]`` one loss."""
        spk, txt = out["spike_features"].float(), out["text_features"].float()
        if spk.dim() == 2:
            return self.loss_fn(spk, txt, out["logit_scale"], keys=keys)
        per_step = [self.loss_fn(s, txt, out["logit_scale"], keys=keys) for s in spk]  # T (2-4) small losses
        return {k: torch.stack([terms[k] for terms in per_step]).mean() for k in per_step[0]}

    def optimizer_step(self) -> float:
        """Clip, step, schedule; returns the global gradient norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def _skip(batches: Iterable[Batch], n: int) -> Iterator[Batch]:
    it = iter(batches)
    for _ in range(n):  # resume mid-epoch: drop what the checkpointed run already consumed
        if next(it, None) is None:
            return iter(())
    return it


def train_epoch(loop: Loop, batches: Iterable[Batch], state: TrainState,
                on_step: Callable[[TrainState, dict[str, float]], None]) -> bool:
    """Run one epoch (or what is left of it); returns False when ``train.max_steps`` was reached.

    ``state`` is updated in place: ``step`` after each optimiser step, ``batch_in_epoch`` after each micro-batch.
    A trailing group of fewer than ``accum_steps`` micro-batches still makes one (smaller) optimiser step.
    ``loop.phases`` gains the seconds spent waiting for batches (``data``) and in forward/backward/optimiser
    (``step``); what the hooks take is neither.
    """
    accum, max_steps = loop.cfg.optim.accum_steps, loop.cfg.train.max_steps
    loop.model.train()
    pending: list[dict[str, float]] = []
    t0 = time.perf_counter()
    clips = 0
    timed = loop.phases.timed
    with timed("data"):
        it = _skip(batches, state.batch_in_epoch)
        batch = next(it, None)
    while batch is not None:
        with timed("data"):
            nxt = next(it, None)  # look ahead so the last micro-batch of the epoch syncs gradients
        last_in_group = len(pending) + 1 == accum or nxt is None
        with timed("step"):
            pending.append(loop.micro_step(batch, 1.0 / accum, sync=last_in_group, epoch=state.epoch,
                                           index=state.batch_in_epoch))
        clips += len(batch["caption"])
        state.batch_in_epoch += 1
        if last_in_group:
            metrics = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
            with timed("step"):
                metrics["grad_norm"] = loop.optimizer_step()
            metrics["lr"] = loop.scheduler.get_last_lr()[0]
            metrics["clips_per_s"] = clips / max(time.perf_counter() - t0, 1e-9)
            state.step += 1
            pending, clips, t0 = [], 0, time.perf_counter()
            on_step(state, metrics)
            if max_steps and state.step >= max_steps:
                return False
        batch = nxt
    return True


def run_training(loop: Loop, state: TrainState, epoch_batches: Callable[[int], Iterable[Batch]],
                 on_step: Callable[[TrainState, dict[str, float]], None],
                 on_epoch_end: Callable[[TrainState], None]) -> TrainState:
    """Epochs ``state.epoch .. train.epochs-1``; `epoch_batches(epoch)` yields that epoch's micro-batches."""
    while state.epoch < loop.cfg.train.epochs:
        go_on = train_epoch(loop, epoch_batches(state.epoch), state, on_step)
        state.epoch += 1
        state.batch_in_epoch = 0
        on_epoch_end(state)
        if not go_on:
            break
    return state
