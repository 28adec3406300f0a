"""The Ray Train per-worker function: glue between Ray (shards, context, checkpoints) and the pure-torch loop.

The driver (launcher.py) passes a plain dict: the flat experiment config plus facts it derived once (dataset
metadata, planned step count, the MLflow run to log to). Every rank trains; rank 0 alone evaluates, logs to
MLflow and attaches checkpoints; every rank calls ``ray.train.report`` at the same points.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch

from spklip.config import ExperimentConfig
from spklip.train import data as train_data
from spklip.train.checkpoint import TrainState, read_checkpoint, restore_training, save_checkpoint, unwrap
from spklip.train.epoch_eval import EpochEvaluator
from spklip.train.loop import Loop, run_training, seed_everything
from spklip.tracking import Tracker


def _setup_model(cfg: ExperimentConfig, world: int, rank: int):
    """Model (DDP-wrapped when world > 1), loss and device; the same seed on every rank gives the same init."""
    from spklip.loss import ClipLoss
    from spklip.model import create_model

    seed_everything(cfg.train.seed)
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    if world > 1:
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    else:
        model = model.to(ray.train.torch.get_device())
    device = next(unwrap(model).parameters()).device
    return model, ClipLoss(cfg.loss, rank=rank, world_size=world), device


def _maybe_fail(config: dict[str, Any], step: int, rank: int) -> None:
    """Fault injection for tests: kill this worker process once at the given step (marker file makes it once)."""
    fail = config.get("fail_at_step")
    if fail and rank == 0 and step == fail["step"] and not Path(fail["marker"]).exists():
        Path(fail["marker"]).write_text(str(step))
        os._exit(1)


def _local_checkpoints(run_dir: str) -> list[Path]:
    """Checkpoint folders written in local mode (``scale.num_workers=0``), oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_step=*") if (p / "state.pt").exists())


def _resume_point(config: dict[str, Any]):
    """The checkpoint to resume from: Ray's latest (worker restart, resumed run) or, in local mode, the newest
    folder of this run (local mode keeps checkpoints only in memory, so spklip writes them itself)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("local_run_dir"):
        found = _local_checkpoints(config["local_run_dir"])
        checkpoint = ray.train.Checkpoint.from_directory(str(found[-1])) if found else None
    return checkpoint


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer(train_loop_per_worker=train_fn_per_worker)``)."""
    cfg = ExperimentConfig.from_flat_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model, loss_fn, device = _setup_model(cfg, world, rank)
    loop = Loop.create(cfg, model, loss_fn, device, config["total_steps"])
    state = TrainState()
    checkpoint = _resume_point(config)
    if checkpoint is not None:  # a restarted worker group or a resumed run: continue where the last report was
        with checkpoint.as_directory() as d:
            state = restore_training(read_checkpoint(d, map_location=device), model=model,
                                     optimizer=loop.optimizer, scheduler=loop.scheduler)
    tracker = Tracker(config["tracking_uri"], config["mlflow_run_id"] if rank == 0 else None)
    evaluator = EpochEvaluator(cfg, config["dataset"], tracker) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    last_eval: dict[str, float] = {}

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        name = f"checkpoint_step={state.step:07d}"
        if not with_checkpoint:
            ray.train.report(metrics)
        elif config.get("local_run_dir"):  # local mode: a persistent folder, the last keep_checkpoints kept
            d = save_checkpoint(Path(config["local_run_dir"]) / name, model=model, cfg=cfg, state=state,
                                optimizer=loop.optimizer, scheduler=loop.scheduler)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
            for old in _local_checkpoints(config["local_run_dir"])[:-max(1, cfg.train.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        else:
            _report_distributed(metrics, name)

    def _report_distributed(metrics: dict[str, float], name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                save_checkpoint(d, model=model, cfg=cfg, state=state, optimizer=loop.optimizer,
                                scheduler=loop.scheduler)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)

    def on_step(st: TrainState, metrics: dict[str, float]) -> None:
        _maybe_fail(config, st.step, rank)
        if rank == 0 and st.step % cfg.train.log_every == 0:
            tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, st.step)
        if cfg.train.checkpoint_every and st.step % cfg.train.checkpoint_every == 0:
            unscored = float("-inf") if cfg.train.metric_mode == "max" else float("inf")  # not evaluated yet
            report({"step": st.step, "epoch": st.epoch, "train/loss": metrics["loss"], cfg.train.metric: unscored},
                   with_checkpoint=True)

    def on_epoch_end(st: TrainState) -> None:
        if rank == 0:
            last_eval.clear()
            last_eval.update(evaluator.run(model, device, st.step, st.epoch, loop.autocast_dtype))
            st.metrics = dict(last_eval)
        report({"step": st.step, "epoch": st.epoch, **last_eval}, with_checkpoint=True)

    run_training(loop, state, lambda epoch: train_data.train_batches(shard, cfg, epoch), on_step, on_epoch_end)
