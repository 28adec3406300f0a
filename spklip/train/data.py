"""The Ray side of reading the training split: Ray Datasets for TorchTrainer and a worker's shard as micro-batches.

Everything that reads shards without Ray (`dataset_info`, evaluation and sample batches, the decoded split) is in
`spklip.data.read`; this module builds the Ray paths on the same decoding and `to_torch`:

* `ray_train_dataset`: the training split handed to TorchTrainer (streamed, or `in_memory_dataset` for small sets).
* `train_batches`: one epoch of a worker's Ray Data shard as torch micro-batches (seeded local shuffle).
* `steps_per_epoch`: optimiser steps per epoch for a number of workers.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import numpy as np

from spklip.config import ExperimentConfig
from spklip.data.loader import ray_dataset, torch_batches
from spklip.data.read import decoded_split
from spklip.data.shards import ShardError, validate_shards


def ray_train_dataset(cfg: ExperimentConfig):
    """The training split as a Ray Dataset (decoded rows); handed to TorchTrainer as ``datasets["train"]``."""
    import ray.data  # lazy: heavy, and `train_in_process` imports this module (steps_per_epoch) without Ray

    if not sys.stdout.isatty():  # per-operator progress bars turn logs and CI output into noise
        ray.data.DataContext.get_current().enable_progress_bars = False
    # Shards are stored in class order and Ray Train splits rows between workers in order, so without a global
    # shuffle each worker would see only some classes (per-worker BatchNorm statistics and in-batch negatives of a
    # few classes). A seeded global shuffle, then each worker reshuffles locally per epoch.
    if materialize_train(cfg):
        return in_memory_dataset(cfg)
    ds = ray_dataset(cfg.data.path, cfg.data.train_split)
    return ds.random_shuffle(seed=cfg.data.seed) if cfg.data.shuffle else ds  # an all-to-all pass per epoch


def in_memory_dataset(cfg: ExperimentConfig):
    """The training split read, shuffled (seeded) and decoded once in this process, as an in-memory Ray Dataset:
    no read or shuffle tasks, so it cannot wait for CPUs that concurrent trials hold, and epochs only iterate."""
    import ray.data  # lazy: as in ray_train_dataset

    cols = decoded_split(cfg.data.path, cfg.data.train_split)  # numpy columns, file order
    n = len(cols["label"])
    if cfg.data.shuffle:
        order = np.random.default_rng(cfg.data.seed).permutation(n)
        cols = {k: v[order] for k, v in cols.items()}
    keys = list(cols)
    rows = [dict(zip(keys, values)) for values in zip(*cols.values())]  # one dict per clip: spikes [N, H, W] uint8
    return ray.data.from_items(rows, override_num_blocks=min(n, 8))


def materialize_train(cfg: ExperimentConfig) -> bool:
    """Whether the decoded training split is kept in the object store (``data.materialize``; auto: small sets)."""
    if cfg.data.materialize != "auto":
        return bool(cfg.data.materialize)
    meta = validate_shards(cfg.data.path)
    decoded = meta["splits"].get(cfg.data.train_split, 0) * int(np.prod(meta["clip_shape"]))  # bytes, 1 per pixel-plane
    return decoded <= cfg.data.materialize_max_mb * 2**20


def train_batches(shard, cfg: ExperimentConfig, epoch: int) -> Iterator[dict[str, Any]]:
    """One epoch of a worker's shard as torch micro-batches (full batches only, so ranks stay in step).

    The order is reshuffled every epoch from ``data.seed + epoch`` (local shuffle buffer), so a resumed run sees the
    same batches as an uninterrupted one when the shard is read by a single worker.
    """
    yield from torch_batches(shard, cfg.data.batch_size, epoch=epoch, seed=cfg.data.seed, shuffle=cfg.data.shuffle,
                             drop_last=True)


def steps_per_epoch(train_rows: int, cfg: ExperimentConfig, world: int) -> int:
    """Optimiser steps in one epoch: full batches per worker, grouped by ``optim.accum_steps``."""
    batches = (train_rows // max(world, 1)) // cfg.data.batch_size
    if batches == 0:
        raise ShardError(f"train split has {train_rows} clips: fewer than one batch of {cfg.data.batch_size} per "
                         f"worker ({world} workers); lower data.batch_size or scale.num_workers")
    return -(-batches // cfg.optim.accum_steps)
