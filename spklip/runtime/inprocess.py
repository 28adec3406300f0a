"""Train one config in this process, without Ray: the pure-torch loop on a training split held in memory.

For quick studies and the learning tests: the same `Loop` (augmentation, class-aware loss, schedule) and the same
evaluation protocol as a Ray Train run, on one process and one device. Each epoch reshuffles the split from
``(data.seed, epoch)``; only full batches are used (`spklip.data.loader.epoch_batches`, also `spklip train`'s reader
in local mode). `spklip train` (Ray Train) is the path for real runs.
"""

from __future__ import annotations

from typing import Any

import torch

from spklip.config import ExperimentConfig
from spklip.data.loader import SpikeShardDataset, epoch_batches
from spklip.data.read import dataset_info
from spklip.loss import ClipLoss
from spklip.model import Spklip
from spklip.train.checkpoint import TrainState
from spklip.runtime.reader import steps_per_epoch
from spklip.runtime.epoch_eval import EpochEvaluator
from spklip.train.loop import Loop, run_training, seed_everything
from spklip.runtime.tracking import Tracker


def train_in_process(cfg: ExperimentConfig, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train `cfg` to ``train.epochs`` / ``train.max_steps`` and return ``(model, final evaluation metrics)``."""
    dataset = dataset_info(cfg)
    device = torch.device(device)
    split = SpikeShardDataset(cfg.data.path, cfg.data.train_split)  # bit-packed in memory, decoded a batch at a time
    steps = steps_per_epoch(len(split), cfg, 1) * cfg.train.epochs
    steps = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
    seed_everything(cfg.train.seed)
    model = Spklip(cfg.model, cfg.loss).to(device)
    loop = Loop.create(cfg, model, ClipLoss(cfg.loss), device, steps)

    evaluator = EpochEvaluator(cfg, dataset, Tracker(None, None))
    final: dict[str, Any] = {}

    def on_epoch_end(state: TrainState) -> None:
        if state.epoch == cfg.train.epochs or (cfg.train.max_steps and state.step >= cfg.train.max_steps):
            final.update(evaluator.run(model, device, state.step, state.epoch, loop.autocast_dtype))

    def batches(epoch: int):
        return epoch_batches(split, cfg.data.batch_size, epoch, seed=cfg.data.seed, shuffle=cfg.data.shuffle)

    state = run_training(loop, TrainState(), batches, lambda st, m: None, on_epoch_end)
    final.setdefault("step", state.step)
    return model, final
