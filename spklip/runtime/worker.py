"""The Ray Train per-worker function: glue between Ray (shards, context, checkpoints) and the pure-torch loop.

The driver (launcher.py) passes one typed `WorkerPlan` (``train_loop_config={"plan": plan}``): the experiment
config plus facts it derived once (dataset metadata, planned step count, the MLflow run to log to). Every rank
trains; rank 0 alone evaluates, logs to MLflow and attaches checkpoints; every rank calls ``ray.train.report`` at
the same points. Local mode (``scale.num_workers=0``, `train_local`) runs the same `_WorkerRun` in the driver without
Ray: rank 0 of 1, its own checkpoint folders ranked as Ray Train would (`prune_local`), the run's callbacks called.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import ray.train
import ray.train.torch
import torch

from spklip.config import ExperimentConfig
from spklip.data import storage
from spklip.data.loader import SpikeShardDataset, epoch_batches
from spklip.data.read import DatasetFacts
from spklip.loss import ClipLoss
from spklip.model import Spklip
from spklip.runtime.ray_private import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME, ControllerCallback, WorkerGroupCallback
from spklip.runtime import reader as train_data
from spklip.torchutil import nonfinite_tensors, unwrap
from spklip.train.checkpoint import (CheckpointError, TrainState, read_checkpoint, restore_training, save_checkpoint,
                                     trainable_state_dict)
from spklip.runtime.epoch_eval import EpochEvaluator, evaluates_after
from spklip.train.faults import maybe_crash
from spklip.train.loop import (Loop, NonFiniteError, StepProfiler, apply_threads, prepare_for_device, run_training,
                               seed_everything)
from spklip.train.progress import append_line, epoch_line
from spklip.train.timing import PHASES, RunTiming, Timeline, epoch_metrics, startup_metrics
from spklip.runtime.tracking import SPOOL_DIR, Tracker


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker needs, decided once on the driver (`spklip.runtime.launcher.prepare_run`)."""

    cfg: ExperimentConfig  # absolute paths
    total_steps: int  # planned optimiser steps (the LR schedule's length)
    dataset: DatasetFacts  # `spklip.data.read.dataset_info`: splits, classes, fingerprint
    tracking_uri: str
    mlflow_run_id: str | None  # rank 0 logs to this run; None: tracking off
    run_dir: str | None = None  # {storage_path}/{run_name}: rank 0's progress lines and tracking spool go there
    timeline: Timeline = field(default_factory=Timeline)  # the driver's start-up milestones (command start on)

    @property
    def local(self) -> bool:
        """Local mode (``scale.num_workers=0``): the loop runs in the driver, without Ray (`train_local`)."""
        return self.cfg.scale.num_workers == 0

    @property
    def local_run_dir(self) -> str | None:
        """Where local mode writes its checkpoints itself (`prune_local` ranks them): the run folder."""
        return self.run_dir if self.local else None


# DDP without the per-step buffer broadcast (train-mode BatchNorm never reads running statistics, and rank 0
# re-estimates them before each evaluation: precise BN) and with gradients as views of the all-reduce buckets (no
# copy of every gradient into a bucket and back): bench-train's profile of a 2-worker step (docs/benchmarks.md)
DDP_KWARGS = {"broadcast_buffers": False, "gradient_as_bucket_view": True}


class ModelError(ValueError):
    """The model cannot be built from the config (e.g. a ``model.text.pretrained`` folder missing on this node):
    the same in every attempt, so never retried (`FAIL_FAST`)."""


def local_device(cfg: ExperimentConfig) -> torch.device:
    """The device of a local-mode run (no Ray worker, so no Ray resources decide it): the first GPU when
    ``scale.use_gpu`` is true, or ``auto`` and torch sees one; else the CPU."""
    gpu = cfg.scale.use_gpu is True or (cfg.scale.use_gpu == "auto" and torch.cuda.is_available())
    return torch.device("cuda", 0) if gpu else torch.device("cpu")


def _setup_model(cfg: ExperimentConfig, world: int, rank: int):
    """Model (DDP-wrapped when world > 1), loss and device; the same seed on every rank gives the same init."""
    seed_everything(cfg.train.seed)
    try:
        model = Spklip(cfg.model, cfg.loss)
    except ValueError as e:  # the driver built it (`spklip.runtime.launcher.check_before_workers`): this node differs
        raise ModelError(str(e)) from None
    device = local_device(cfg) if cfg.scale.num_workers == 0 else ray.train.torch.get_device()
    # layout and compile before DDP lays out its gradient buckets (`Loop.create` finds it done)
    prepare_for_device(model, cfg.train, device)
    if world > 1:
        # every trainable parameter gets a gradient each step (tests/test_model_presets.py checks it for every
        # preset), so DDP needs no find_unused_parameters (which costs an extra autograd graph walk per step)
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=DDP_KWARGS)
    else:
        model = model.to(device)
    device = next(unwrap(model).parameters()).device
    return model, ClipLoss(cfg.loss, rank=rank, world_size=world), device


REPORT_FILE = "spklip_report.json"  # local mode: in each checkpoint folder, the metrics it was reported with


def _local_checkpoints(run_dir: str) -> list[Path]:
    """Checkpoint folders written in local mode (``scale.num_workers=0``), oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_step=*") if (p / "state.pt").exists())


def local_reports(run_dir: str) -> list[tuple[ray.train.Checkpoint, dict[str, Any]]]:
    """Local mode's checkpoints with the metrics each was reported with (`REPORT_FILE`; a resumed run ranks the
    earlier ones too), oldest first: what Ray Train's ``Result.best_checkpoints`` holds for its workers' runs."""
    out = []
    for folder in _local_checkpoints(run_dir):
        try:
            metrics = json.loads((folder / REPORT_FILE).read_text())
        except (OSError, ValueError):  # written before its report: unscored
            metrics = {}
        out.append((ray.train.Checkpoint.from_directory(str(folder)), metrics))
    return out


def prune_local(run_dir: str, cfg: ExperimentConfig) -> None:
    """Keep what Ray Train's ``CheckpointConfig`` keeps for its workers: the ``train.keep_checkpoints`` best by
    ``train.metric`` (``train.metric_mode``), and always the latest (a resume continues from it)."""
    reports = local_reports(run_dir)
    sign = 1 if cfg.train.metric_mode == "max" else -1

    def score(report) -> float:
        value = report[1].get(cfg.train.metric)
        return sign * value if isinstance(value, (int, float)) and value == value else -math.inf

    keep = {r[0].path for r in sorted(reports, key=score, reverse=True)[:cfg.train.keep_checkpoints]}
    keep |= {reports[-1][0].path} if reports else set()
    for checkpoint, _ in reports:
        if checkpoint.path not in keep:
            shutil.rmtree(checkpoint.path, ignore_errors=True)


def _resume_point(plan: WorkerPlan):
    """The checkpoint to resume from: Ray's latest (worker restart, resumed run) or, in local mode, the newest
    folder of this run (spklip writes local mode's checkpoints itself)."""
    if not plan.local:
        return ray.train.get_checkpoint()
    found = _local_checkpoints(plan.local_run_dir) if plan.local_run_dir else []
    return ray.train.Checkpoint.from_directory(str(found[-1])) if found else None


def ray_resume_checkpoint(run_folder: str | Path) -> str | None:
    """The checkpoint Ray Train hands the workers of a run continued in `run_folder` (``{storage_path}/{run_name}``,
    local or a URI): the latest of Ray's checkpoint-manager snapshot (Ray 2.60 Train v2's file: no public API reads
    it before ``fit``); None for a run with none."""
    snapshot = storage.join(run_folder, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
    try:
        latest = json.loads(storage.read_text(snapshot)).get("latest_checkpoint_result") or {}
    except (OSError, ValueError, AttributeError):  # none yet, or not Ray's: Ray decides what it does with it
        return None
    name = latest.get("checkpoint_dir_name")
    return str(storage.join(run_folder, name)) if isinstance(name, str) and name else None


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker=train_fn_per_worker)``)."""
    _WorkerRun(config["plan"]).run()


def train_local(plan: WorkerPlan, callbacks: Sequence[Any] = ()) -> ray.train.Result:
    """Local mode (``scale.num_workers=0``): the loop in this process, without Ray (Ray Train's own local mode
    cannot run inside a Ray Tune trial, where ``ray.train.report`` and ``get_context`` refuse to work). The run's Ray
    Train ``UserCallback``s (a sweep trial's ``TuneReportCallback``) get each report's ``after_report`` (with
    ``run_context=None``), as Ray Train calls them for its workers. Returns what ``TorchTrainer.fit`` would: the last
    report's metrics and checkpoint."""
    run = _WorkerRun(plan, callbacks)
    run.run()
    metrics, checkpoint = run.last_report
    if run.checkpointed_step < 0 and metrics is not None:  # resumed past its end, reported nothing (a restored trial):
        for callback in run.callbacks:  # the callbacks still get its last report (Tune needs the trial's metric)
            callback.after_report(run_context=None, metrics=[dict(metrics)], checkpoint=checkpoint)
    return ray.train.Result(metrics=metrics, checkpoint=checkpoint, error=None, path=None,
                            best_checkpoints=local_reports(plan.local_run_dir))


class _WorkerRun:
    """One worker's training run: set-up and resume, then the loop with the reporting hooks."""

    def __init__(self, plan: WorkerPlan, callbacks: Sequence[Any] = ()):
        self.plan = plan
        self.callbacks = list(callbacks)  # local mode: the run's Ray Train callbacks, called on each report
        self.last_report: tuple[dict[str, float] | None, ray.train.Checkpoint | None] = (None, None)  # local mode
        self.cfg = cfg = plan.cfg
        self.timeline = plan.timeline.copy()  # local mode runs in the driver: never mark the driver's plan
        self.timeline.mark("worker_start")  # the worker group and this process started, train_fn called
        if plan.local:
            self.rank, world = 0, 1
        else:
            ctx = ray.train.get_context()
            self.rank, world = ctx.get_world_rank(), ctx.get_world_size()
        # before the model: its first ops size torch's thread pool. A local-mode loop inside a Ray actor (a sweep's
        # trial) shares the machine with other trials: it takes its CPU share, not every core
        shared = plan.local and ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        self.threads = apply_threads(cfg.scale, shared=shared)
        self.model, loss_fn, self.device = _setup_model(cfg, world, self.rank)
        self.timeline.mark("model_build")
        self.loop = Loop.create(cfg, self.model, loss_fn, self.device, plan.total_steps, rank=self.rank)
        self.phases = self.loop.phases  # the loop adds data and step; this run eval, bn and checkpoint
        self.timing = RunTiming(threads=self.threads)
        self.batched = self.stepped = False  # this process has had its first batch, made its first step
        self.state = TrainState()
        checkpoint = _resume_point(plan)
        if checkpoint is not None:  # a restarted worker group or a resumed run: continue where the last report was
            with checkpoint.as_directory() as d:
                self.state = restore_training(read_checkpoint(d, map_location=self.device), model=self.model,
                                              optimizer=self.loop.optimizer, scheduler=self.loop.scheduler)
            if plan.local:  # a resumed run with nothing left to train still returns its last report
                self.last_report = (dict(local_reports(plan.local_run_dir)[-1][1]), checkpoint)
        self.tracker = Tracker(plan.tracking_uri, plan.mlflow_run_id if self.rank == 0 else None,
                               spool_dir=Path(plan.run_dir) / SPOOL_DIR if plan.run_dir else None)
        self.evaluator = EpochEvaluator(cfg, plan.dataset, self.tracker) if self.rank == 0 else None
        self.last_eval: dict[str, float] = {}
        self.evaluated_in_epoch = False  # an evaluation ran since the last epoch end (its metrics go on the line)
        self.epoch_drained = False  # set by _epoch_batches when the epoch has no batch left
        self.checkpointed_step = -1  # step of the last report that carried a checkpoint
        self.last_loss: float | None = None  # for the progress line
        self.profiler = StepProfiler.from_env() if self.rank == 0 else None  # SPKLIP_PROFILE: a profile of steps
        self.timeline.mark("setup")  # optimiser, resume, tracker, evaluator
        self.epoch_started = time.monotonic()

    def run(self) -> None:
        data = self.cfg.data
        if self.plan.local:  # the loop in the driver: the split bit-packed in this process, no Ray Data
            read = functools.partial(epoch_batches, SpikeShardDataset(data.path, data.train_split), data.batch_size,
                                     seed=data.seed, shuffle=data.shuffle)
        else:
            read = functools.partial(train_data.train_batches, ray.train.get_dataset_shard("train"), self.cfg)
        self.epoch_started = time.monotonic()
        run_training(self.loop, self.state, lambda epoch: self._epoch_batches(read, epoch), self.on_step,
                     self.on_epoch_end)

    def _epoch_batches(self, read, epoch: int):
        """The epoch's batches (`read(epoch)`); marks the epoch as drained once the loop's look-ahead finds no next
        batch, which happens before the epoch's last ``on_step`` (the loop looks ahead to sync gradients on the last
        batch)."""
        self.epoch_drained = False
        try:
            for batch in read(epoch):
                if not self.batched:
                    self.batched = True
                    self.timeline.mark("first_batch")
                yield batch
        except Exception as e:
            bad = train_data.data_error_in(e)  # a bad shard: raised plainly, so `FailFastOnDataError` recognises it
            if bad is None:
                raise
            raise bad from None
        self.epoch_drained = True

    def _save(self, directory: str | Path) -> Path:
        return save_checkpoint(directory, model=self.model, cfg=self.cfg, state=self.state,
                               optimizer=self.loop.optimizer, scheduler=self.loop.scheduler)

    def check_finite(self) -> None:
        """Raise `NonFiniteError` when a weight of the model holds a NaN or an infinity: a diverged model is never
        checkpointed, so it can never become the best checkpoint or the logged model. Every rank checks (DDP ranks
        hold the same weights), so they all stop together; one pass over the weights per checkpoint."""
        bad = nonfinite_tensors(trainable_state_dict(unwrap(self.model)))
        if bad:
            raise NonFiniteError(f"step {self.state.step}: {len(bad)} weight tensor(s) hold NaN or inf (first "
                                 f"{bad[0]}): the run diverged, no checkpoint saved (optim.lr={self.cfg.optim.lr:g})")

    def report(self, metrics: dict[str, float]) -> None:
        """``ray.train.report`` with a checkpoint (attached by rank 0; every rank reports); never of non-finite
        weights (`check_finite`)."""
        self.check_finite()
        name = f"checkpoint_step={self.state.step:07d}"
        if self.state.step == self.checkpointed_step:  # never reuse a folder name: Ray would delete it along with
            name += f"-epoch={self.state.epoch}"  # the older report's entry (on_step avoids getting here)
        self.checkpointed_step = self.state.step
        if self.plan.local:  # a persistent folder with its metrics, ranked and pruned as Ray Train would
            local_dir = self.plan.local_run_dir
            d = self._save(Path(local_dir) / name)
            (d / REPORT_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(str(d))
            self.last_report = (dict(metrics), checkpoint)
            for callback in self.callbacks:  # what Ray Train does for its workers' reports (rank 0's metrics)
                callback.after_report(run_context=None, metrics=[dict(metrics)], checkpoint=checkpoint)
            prune_local(local_dir, self.cfg)
            return
        with tempfile.TemporaryDirectory() as d:
            ckpt = ray.train.Checkpoint.from_directory(str(self._save(d))) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)

    def timed_report(self, metrics: dict[str, float]) -> None:
        with self.phases.timed("checkpoint"):  # saving, Ray's persisting and its wait for every rank
            self.report(metrics)

    def on_step(self, st: TrainState, metrics: dict[str, float]) -> None:
        maybe_crash(st.step, self.rank)
        if not self.stepped:
            self.first_step(st.step)
        if self.profiler is not None:
            self.profiler.step(st.step)
        train = self.cfg.train
        self.last_loss = metrics.get("loss", self.last_loss)
        if self.rank == 0 and st.step % train.log_every == 0:
            self.tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, st.step)
        # An epoch's last step (or the max_steps one) is evaluated and checkpointed by on_epoch_end when due (a resume
        # from it starts the next epoch), and only there: one checkpoint per step, so Ray never holds two reports of
        # one folder (it deleted the folder with the first).
        ends_epoch = self.epoch_drained or bool(train.max_steps and st.step >= train.max_steps)
        if not ends_epoch and evaluates_after(self.cfg, None, st.step):  # eval.every_steps, mid-epoch
            self.evaluate(st)
            self.timed_report({"step": st.step, "epoch": st.epoch, **self.last_eval})
            return
        ends_eval_epoch = ends_epoch and evaluates_after(self.cfg, st.epoch + 1, st.step)
        if train.checkpoint_every and st.step % train.checkpoint_every == 0 and not ends_eval_epoch:
            # not evaluated yet: the worst finite score (Ray's run snapshot is JSON, which stores +-inf as null; a
            # resumed run then failed ranking its restored checkpoints, "float * NoneType")
            unscored = -sys.float_info.max if train.metric_mode == "max" else sys.float_info.max
            self.timed_report({"step": st.step, "epoch": st.epoch, "train/loss": metrics["loss"],
                               train.metric: unscored})

    def first_step(self, step: int) -> None:
        """The first optimiser step of this process is done: rank 0 logs the start-up breakdown."""
        self.stepped = True
        self.timing.first_step = step
        self.timeline.mark("first_step")
        self.timing.startup_s, metrics = startup_metrics(self.timeline)
        self.timing.startup = self.timeline.phases()
        if self.rank == 0:
            self.tracker.log_metrics(metrics, step)

    def evaluate(self, st: TrainState) -> None:
        """Rank 0 evaluates the model now (precise BN, the protocol, logging); `st` keeps the metrics for the
        checkpoint every rank reports next."""
        self.evaluated_in_epoch = True
        self.timing.evaluations += 1
        if self.rank == 0:
            self.last_eval = self.evaluator.run(self.model, self.device, st.step, st.epoch, self.loop.autocast_dtype,
                                                phases=self.phases)
            st.metrics = dict(self.last_eval)

    def on_epoch_end(self, st: TrainState) -> None:
        """Rank 0 writes the epoch's progress line (with the metrics of an evaluation in this epoch). When the epoch's
        last step is due for evaluation (`evaluates_after`: ``eval.every_steps`` or ``eval.every_epochs``, and the
        run's last step), rank 0 first evaluates, then every rank reports with the checkpoint."""
        evaluated = evaluates_after(self.cfg, st.epoch, st.step)
        if evaluated:
            self.evaluate(st)
        if self.rank == 0 and self.plan.run_dir:
            append_line(self.plan.run_dir, epoch_line(int(st.epoch), self.cfg.train.epochs, st.step,
                                                      self.plan.total_steps, self.cfg.train.metric,
                                                      self.last_eval if self.evaluated_in_epoch else {},
                                                      self.last_loss, time.monotonic() - self.epoch_started,
                                                      {p: self.phases.seconds.get(p, 0.0) for p in PHASES}))
        self.evaluated_in_epoch = False
        if evaluated:
            self.timed_report({"step": st.step, "epoch": st.epoch, **self.last_eval})
        self.end_epoch_timing(st.step)

    def end_epoch_timing(self, step: int) -> None:
        """Close the epoch's time breakdown (its checkpoint included): rank 0 logs it and rewrites the run folder's
        `spklip.train.timing.TIMING_FILE`."""
        now = time.monotonic()
        seconds, epoch_s = self.phases.take(), now - self.epoch_started
        self.epoch_started = now
        if self.rank != 0:
            return
        self.timing.add_epoch({p: seconds.get(p, 0.0) for p in PHASES}, self.timeline.elapsed())
        self.tracker.log_metrics({**epoch_metrics(seconds, epoch_s), **self.timing.run_metrics()}, step)
        if self.plan.run_dir:
            self.timing.write(self.plan.run_dir)


# deterministic: never retried (a bad shard, a diverged run, a checkpoint that cannot be read or does not fit the
# model, a model that cannot be built)
FAIL_FAST: tuple[type[Exception], ...] = (train_data.DataError, NonFiniteError, CheckpointError, ModelError)


def fail_fast_error_in(e: BaseException) -> Exception | None:
    """The deterministic error (`FAIL_FAST`: a bad shard, a diverged run, a bad checkpoint, a model that cannot be
    built) inside `e`, however Ray wrapped it."""
    return train_data.data_error_in(e, FAIL_FAST)


class FailFastOnDataError(WorkerGroupCallback, ControllerCallback):
    """A worker that failed on a deterministic error (`FAIL_FAST`: a bad shard, `spklip.runtime.reader.DataError`; a
    diverged run, `spklip.train.loop.NonFiniteError`; a checkpoint it cannot restore, `CheckpointError`; a model it
    cannot build, `ModelError`) fails the run at once: restarting the workers would read the
    same file again, or diverge again, ``scale.max_failures`` times. Ray Train retries every worker error; a
    controller callback that raises makes a controller error, which it does not retry (Ray 2.60, Train v2).
    (Internal Ray Train hooks: the public ``UserCallback`` can observe a worker's error but not stop the retry.)"""

    def __init__(self):
        self.error: Exception | None = None

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        for error in (worker_group_status.errors or {}).values():
            self.error = self.error or fail_fast_error_in(error)

    def before_controller_execute_failure_decision(self, failure_decision) -> None:
        if self.error is not None:
            raise self.error
