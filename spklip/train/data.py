"""What training and evaluation need from the spike shards (spklip.data), checked once on the driver.

`dataset_info` validates everything before any worker starts (schema, empty splits, clip shape vs model);
`train_batches` turns a worker's Ray Data shard into torch micro-batches for one epoch (seeded local shuffle);
`eval_batches` streams a whole split straight from its Parquet files (no Ray needed: rank 0 and ``spklip eval``).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spklip.config import ExperimentConfig
from spklip.data.shards import (ShardError, decode_batch, open_shard, read_shard, reading, split_files,
                                validate_shards)


def dataset_info(cfg: ExperimentConfig, eval_only: bool = False, split: str | None = None) -> dict[str, Any]:
    """Validate the shards named by ``cfg.data`` against the model config and return what training needs.

    Args:
        cfg: The experiment config.
        eval_only: Only the evaluation split (`split`, default ``data.val_split``) must exist and be non-empty.
        split: The evaluation split to check.

    Raises:
        ShardError: wrong schema, missing or empty split, or clips of another size than the model expects.
    """
    meta = validate_shards(cfg.data.path)
    needed = [split or cfg.data.val_split] if eval_only else [cfg.data.train_split, cfg.data.val_split]
    for split in needed:
        split_files(cfg.data.path, split, meta)  # raises on an unknown or empty split
    want = [cfg.model.num_planes, cfg.model.height, cfg.model.width]
    if list(meta["clip_shape"]) != want:
        raise ShardError(f"{cfg.data.path}: clips are [N, H, W] = {list(meta['clip_shape'])} but the model is built "
                         f"for {want}; set model.num_planes/height/width or rebuild the dataset")
    return {"path": str(cfg.data.path), "class_names": list(meta["class_names"]),
            "seen_ids": list(meta["seen_labels"]), "unseen_ids": sorted(meta["unseen_labels"]),
            "split_rows": dict(meta["splits"]), "fingerprint": meta["fingerprint"],
            "clip_shape": list(meta["clip_shape"])}


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Decoded numpy batch -> ``{"spikes": uint8 [B,N,H,W], "label": int64 [B], "caption": list, "class_name": list}``."""
    return {"spikes": torch.as_tensor(np.ascontiguousarray(batch["spikes"])),
            "label": torch.as_tensor(np.array(batch["label"], dtype=np.int64)),  # a copy: Arrow buffers are read-only
            "caption": [str(c) for c in batch["caption"]], "class_name": [str(c) for c in batch["class_name"]]}


def eval_batches(path: str, split: str, batch_size: int) -> Iterator[dict[str, Any]]:
    """Every clip of `split` in file order, decoded, as torch batches of at most `batch_size`."""
    for file in split_files(path, split):
        with reading(file):
            for record_batch in open_shard(file).iter_batches(batch_size=batch_size):  # page checksums verified
                yield to_torch(decode_batch(pa.Table.from_batches([record_batch])))


def ray_train_dataset(cfg: ExperimentConfig):
    """The training split as a Ray Dataset (decoded rows); handed to TorchTrainer as ``datasets["train"]``."""
    import sys

    import ray.data

    from spklip.data.loader import ray_dataset
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
    import ray.data

    cols = decoded_split(cfg.data.path, cfg.data.train_split)  # numpy columns, file order
    n = len(cols["label"])
    if cfg.data.shuffle:
        order = np.random.default_rng(cfg.data.seed).permutation(n)
        cols = {k: v[order] for k, v in cols.items()}
    keys = list(cols)
    rows = [dict(zip(keys, values)) for values in zip(*cols.values())]  # one dict per clip: spikes [N, H, W] uint8
    return ray.data.from_items(rows, override_num_blocks=min(n, 8))


def decoded_split(path: str, split: str) -> dict[str, np.ndarray]:
    """A whole split read (page checksums verified) and decoded at once, in file order (`decode_batch` columns)."""
    tables = []
    for file in split_files(path, split):
        with reading(file):
            tables.append(read_shard(file))
    return decode_batch(pa.concat_tables(tables))


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
    from spklip.data.loader import torch_batches
    yield from torch_batches(shard, cfg.data.batch_size, epoch=epoch, seed=cfg.data.seed, shuffle=cfg.data.shuffle,
                             drop_last=True)


def steps_per_epoch(train_rows: int, cfg: ExperimentConfig, world: int) -> int:
    """Optimiser steps in one epoch: full batches per worker, grouped by ``optim.accum_steps``."""
    batches = (train_rows // max(world, 1)) // cfg.data.batch_size
    if batches == 0:
        raise ShardError(f"train split has {train_rows} clips: fewer than one batch of {cfg.data.batch_size} per "
                         f"worker ({world} workers); lower data.batch_size or scale.num_workers")
    return -(-batches // cfg.optim.accum_steps)


def sample_batches(path: str, split: str, num_batches: int, batch_size: int, seed: int) -> Iterator[dict[str, Any]]:
    """`num_batches` batches of `batch_size` clips drawn at random (without replacement) from the whole split.

    Shards are stored in class order, so the first clips of a file are not a sample of the split. The rows are
    picked by a seeded draw over the split's row count, gathered still bit-packed (1 bit per pixel-plane), shuffled
    and decoded one batch at a time. Fewer batches come out when the split is smaller than the request.
    """
    files = split_files(path, split)
    rows = []
    for f in files:
        with reading(f):
            rows.append(pq.ParquetFile(f).metadata.num_rows)
    total = sum(rows)
    n = min(num_batches * batch_size, total - total % batch_size)
    if n <= 0:
        return
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=n, replace=False))
    start, parts = 0, []
    for file, count in zip(files, rows):
        local = pick[(pick >= start) & (pick < start + count)] - start
        if len(local):
            with reading(file):
                parts.append(read_shard(file).take(pa.array(local)))
        start += count
    table = pa.concat_tables(parts).take(pa.array(rng.permutation(n)))  # packed rows in random order
    for i in range(0, n, batch_size):
        yield to_torch(decode_batch(table.slice(i, batch_size)))
