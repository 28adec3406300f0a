"""The pure-torch training loop (no ray import): micro-batches -> optimiser steps, with hooks for reporting.

The loop knows nothing about workers or storage. The Ray layer (worker.py) hands it a `Loop`, an iterable of
batches per epoch and two hooks: ``on_step(state, metrics)`` after every optimiser step and
``on_epoch_end(state)`` after every epoch. Resuming mid-epoch skips the batches already consumed, so a resumed
run sees the same data, RNG and schedule as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from spklip.config import ExperimentConfig, ScaleCfg, TrainCfg
from spklip.data.augment import augment_batch
from spklip.loss import caption_keys
from spklip.model.text import in_templates, training_texts
from spklip.torchutil import maybe_autocast, to_device, unwrap
from spklip.train.checkpoint import TrainState
from spklip.train.schedule import build_optimizer, build_scheduler
from spklip.train.timing import Phases

Batch = dict[str, Any]  # {"spikes": uint8 [B, N, H, W], "caption": list[str], "label": int64 [B], ...}


class NonFiniteError(ValueError):
    """A run that diverged: a NaN/inf loss or gradient norm at an optimiser step (``train.nonfinite``), or weights
    that are not finite where a checkpoint would be saved or evaluated. Deterministic, so restarting the workers
    cannot help (`spklip.runtime.worker.FailFastOnDataError` fails the run at once); one line naming the step."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or ``taskset``'s limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_threads(scale: ScaleCfg, cpus: int | None = None, shared: bool = False) -> int:
    """torch intra-op threads of one training process: ``scale.threads_per_worker``, or when 0 (auto) the worker's
    CPU share, ``floor(scale.cpus_per_worker)`` and at least 1 (the CPUs Ray reserves for it; Ray's own
    ``OMP_NUM_THREADS`` rule), or in local mode (``num_workers=0``: the loop runs in the driver) all `cpus` (default:
    `available_cpus`), unless `shared` (a local-mode loop in a sweep's trial, beside other trials: its CPU share too).
    Never more than `cpus`: threads beyond the cores only wait for each other."""
    cpus = cpus or available_cpus()
    if scale.threads_per_worker:
        want = scale.threads_per_worker
    elif scale.num_workers == 0 and not shared:
        want = cpus
    else:
        want = max(1, math.floor(scale.cpus_per_worker))
    return max(1, min(want, cpus))


def apply_threads(scale: ScaleCfg, shared: bool = False) -> int:
    """``torch.set_num_threads(worker_threads(scale, shared=shared))``; returns the count set. Called by every worker
    before it builds its model (torch only reads ``OMP_NUM_THREADS``, which Ray sets, at its first parallel op)."""
    threads = worker_threads(scale, shared=shared)
    torch.set_num_threads(threads)
    return threads


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on CUDA and full fp32 (None) elsewhere."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` is channels_last on CUDA only."""
    return setting is True or (setting == "auto" and torch.device(device).type == "cuda")


def prepare_for_device(model: torch.nn.Module, train: TrainCfg, device: torch.device) -> dict[str, bool]:
    """The throughput options of `train` for `device`, applied once to `model` (bare or DDP-wrapped; idempotent):

    * CUDA: ``torch.backends.cudnn.benchmark = True`` (clip shapes are fixed, so the algorithm search is paid once
      per shape);
    * ``train.channels_last`` (auto: CUDA only): `Spklip.use_channels_last`;
    * ``train.compile``: `Spklip.compile_visual` (the training forward's visual tower).

    Returns what is on. Called by `Loop.create`; a caller that wraps the model in DDP may call it before wrapping (it
    then changes the layout of the weights before DDP lays out its gradient buckets).
    """
    device = torch.device(device)
    bare = unwrap(model)
    done = getattr(bare, "_spklip_prepared", None)
    if done is not None:
        return done
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = bool(resolve_channels_last(train.channels_last, device) and hasattr(bare, "use_channels_last")
                         and bare.use_channels_last())  # False where the model has no such layout (spiking towers)
    compiled = bool(train.compile and hasattr(bare, "compile_visual"))
    if compiled:
        bare.compile_visual()
    done = {"cudnn_benchmark": device.type == "cuda", "channels_last": channels_last, "compile": compiled}
    object.__setattr__(bare, "_spklip_prepared", done)
    return done


PROFILE_ENV = "SPKLIP_PROFILE"  # a file: rank 0 (or the bench's plain loop) writes a profile of some steps there
PROFILE_STEPS_ENV = "SPKLIP_PROFILE_STEPS"  # "START:COUNT" (default 10:20): the steps after step START, COUNT of them


class StepProfiler:
    """``torch.profiler`` over `count` optimiser steps, from the end of step `start` (past the warm-up) to the end of
    step ``start + count``: everything the process does meanwhile (waiting for data, forward, backward, DDP's
    all-reduce, optimiser, the hooks). `step` is called after every step; the table of the top ops by self CPU time
    goes to `path` with the seconds per step. A diagnostic (`spklip.runtime.worker` arms it from `PROFILE_ENV`)."""

    def __init__(self, path: str | os.PathLike, start: int = 10, count: int = 20, rows: int = 30):
        self.path, self.start, self.count, self.rows = str(path), start, max(1, count), rows
        self.prof: Any = None
        self.t0 = 0.0

    @classmethod
    def from_env(cls) -> "StepProfiler | None":
        path = os.environ.get(PROFILE_ENV, "")
        if not path:
            return None
        start, _, count = os.environ.get(PROFILE_STEPS_ENV, "10:20").partition(":")
        return cls(path, int(start), int(count or 20))

    def step(self, step: int) -> None:
        if step == self.start and self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif step == self.start + self.count and self.prof is not None:
            seconds = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.rows)
            self.prof = None
            with open(self.path, "w") as f:
                f.write(f"steps {self.start + 1}-{step} ({self.count}), {seconds / self.count:.4f} s a step "
                        f"(profiled), torch threads {torch.get_num_threads()}\n{table}\n")


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
    skipped_steps: int = 0  # ``train.nonfinite=skip``: steps skipped for a non-finite loss/gradient (this process)
    consecutive_skips: int = 0  # of which in a row, up to the last step

    @classmethod
    def create(cls, cfg: ExperimentConfig, model: torch.nn.Module, loss_fn, device: torch.device,
               total_steps: int, rank: int = 0) -> "Loop":
        """AdamW + warmup/cosine over `total_steps` optimiser steps on `model` (already on `device`), with the
        device's throughput options (`prepare_for_device`)."""
        prepare_for_device(model, cfg.train, device)
        optimizer = build_optimizer(unwrap(model), cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
        return cls(cfg, model, loss_fn, optimizer, scheduler, device, total_steps,
                   resolve_precision(cfg.train.precision, device), rank)

    def augment(self, batch: Batch, epoch: int, index: int) -> tuple[torch.Tensor, list[str]]:
        """The micro-batch's spikes on the device and its captions, augmented by ``cfg.augment``.

        The augmentation of micro-batch `index` of `epoch` on this rank is a pure function of
        ``(train.seed, rank, epoch, index)``, so a resumed run augments exactly like an uninterrupted one.
        """
        spikes = to_device(batch["spikes"], self.device)  # [B, N, H, W] uint8; CUDA: pinned, non-blocking
        captions = training_texts(self.cfg.model.text, batch)  # the caption or class-name column
        if not self.cfg.augment.enabled:
            return spikes, captions
        seed = int(np.random.SeedSequence([self.cfg.train.seed, self.rank, epoch, index]).generate_state(1)[0])
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return augment_batch(spikes, captions, self.cfg.augment, gen)

    def prompts(self, texts: list[str], epoch: int, index: int) -> list[str]:
        """The texts the model encodes: with ``model.text.train_templates`` each of `texts` in a template drawn from
        ``model.text.templates`` (the set evaluation averages over), a pure function of ``(train.seed, rank, epoch,
        index)`` on its own stream (the spike augmentation's draws are unchanged); otherwise `texts` as they are."""
        text = self.cfg.model.text
        if not text.train_templates:
            return texts
        seed = int(np.random.SeedSequence([self.cfg.train.seed, self.rank, epoch, index, 1]).generate_state(1)[0])
        return in_templates(texts, text.templates, torch.Generator().manual_seed(seed))

    def pair_keys(self, batch: Batch, captions: list[str]) -> torch.Tensor | None:
        """Keys that mark a batch's positive pairs for the loss (``loss.positives``); None: only the diagonal."""
        mode = self.cfg.loss.positives
        if mode == "caption":
            return to_device(caption_keys(captions), self.device)
        if mode == "label":
            return to_device(torch.as_tensor(batch["label"]), self.device)
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
                out = self.model(spikes, self.prompts(captions, epoch, index))
                terms = self.loss(out, self.pair_keys(batch, captions))  # keys of the texts before templates
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

    def optimizer_step(self, loss: float = 0.0, step: int = 0) -> float:
        """Clip, step, schedule; returns the global gradient norm before clipping.

        `loss` is the step's (mean) loss and `step` the number of the step being made. A non-finite loss or gradient
        norm (the norm is all-reduced, so every rank sees the same one) stops the run with `NonFiniteError` before
        the optimiser touches the weights (``train.nonfinite=stop``), or skips the update (``skip``): the gradients
        are dropped, the schedule still advances (it stays aligned with the step count), `skipped_steps` counts it,
        and ``train.nonfinite_skips`` skips in a row stop the run anyway. The check reads the norm once, as the
        step's metrics always did: no extra device sync. An update too large for the weights' dtype (torch's
        "value cannot be converted ... without overflow", e.g. ``optim.lr=1e308``) stops the run in either mode.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        if math.isfinite(norm) and math.isfinite(loss):
            self.consecutive_skips = 0
            try:
                self.optimizer.step()
            except RuntimeError as e:
                if "overflow" not in str(e):
                    raise
                raise NonFiniteError(f"step {step}: the optimiser's update overflows the weights' dtype ({e}): the "
                                     f"run diverged (optim.lr={self.cfg.optim.lr:g}; lower it)") from e
            self.scheduler.step()
        else:
            self.skip_nonfinite(loss, norm, step)
            with warnings.catch_warnings():  # a skipped first step: torch warns the scheduler stepped before it
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def skip_nonfinite(self, loss: float, norm: float, step: int) -> None:
        """Count a step skipped for a non-finite `loss` or gradient `norm`; raise `NonFiniteError` (one line naming
        the step) in ``train.nonfinite=stop`` mode or after ``train.nonfinite_skips`` skips in a row."""
        train = self.cfg.train
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm} (loss {loss:.4g})"
        hint = f"optim.lr={self.cfg.optim.lr:g}; lower it"
        if train.nonfinite == "stop":
            raise NonFiniteError(f"step {step}: {what}: the run diverged ({hint}, or set train.nonfinite=skip to "
                                 "skip such steps)")
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= train.nonfinite_skips:
            raise NonFiniteError(f"step {step}: {what}, {self.consecutive_skips} steps in a row skipped "
                                 f"(train.nonfinite_skips={train.nonfinite_skips}): the run diverged ({hint})")


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
                metrics["grad_norm"] = loop.optimizer_step(metrics["loss"], state.step + 1)
            if loop.cfg.train.nonfinite == "skip":
                metrics["skipped_steps"] = float(loop.skipped_steps)
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
        batches = epoch_batches(state.epoch)
        try:
            go_on = train_epoch(loop, batches, state, on_step)
        finally:  # a run that stops (an error, max_steps) closes its batch generator now, not when it is collected:
            getattr(batches, "close", lambda: None)()  # a Ray Data iterator reports to Ray, which may be gone then
        state.epoch += 1
        state.batch_in_epoch = 0
        on_epoch_end(state)
        if not go_on:
            break
    return state
