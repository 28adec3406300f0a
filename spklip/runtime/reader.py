"""The one Ray Data reader of spike shards: the training split as Ray Datasets for TorchTrainer, and a worker's
shard as torch micro-batches. Every read verifies Parquet page checksums (`spklip.data.shards.open_shard`).

Everything that reads shards without Ray (`dataset_info`, evaluation and sample batches, the decoded split,
`spklip.data.loader.SpikeShardDataset`) is in `spklip.data`; this module builds the Ray paths on the same decoding
and `to_torch`:

* `ray_train_dataset`: the training split handed to TorchTrainer (`streaming_dataset`, or `in_memory_dataset` for
  small sets); built once per run, and each epoch only iterates it.
* `train_batches`: one epoch of a worker's Ray Data shard as torch micro-batches (seeded local shuffle).
* `torch_batches`: any Ray ``DataIterator`` or ``Dataset`` of decoded rows as torch batches (seeded local shuffle).
* `steps_per_epoch`: optimiser steps per epoch for a number of workers.
* `DataError`: a shard that cannot be read while training: the run fails at once, naming the file
  (`spklip.runtime.worker` raises it; `FailFastOnDataError` keeps Ray Train from restarting the workers for it).
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import numpy as np
import torch

from spklip.config import ExperimentConfig
from spklip.data.loader import DECODED_BATCH_BYTES, READ_COLUMNS
from spklip.data.read import decoded_split, to_torch
from spklip.data.shards import ShardError, decode_batch, open_shard, reading, split_files, validate_shards


class DataError(ShardError):
    """A shard that cannot be read or decoded while training: deterministic, so restarting the workers cannot help."""


def data_error_in(e: BaseException, kinds: tuple[type[Exception], ...] = (DataError,)) -> Exception | None:
    """The `DataError` (or other error of `kinds`) inside `e`, however Ray wrapped it (task errors, Ray Data's, Ray
    Train's), as a plain exception of the kind it is an instance of; None without one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        kind = next((k for k in kinds if isinstance(x, k)), None)
        if kind is not None:  # Ray's wrapper classes derive from the error's own: their `cause` is the original
            return kind(*(x.cause.args if isinstance(getattr(x, "cause", None), kind) else x.args))
        todo += [x.__cause__, x.__context__, getattr(x, "cause", None), getattr(x, "_base_exc", None),
                 getattr(x, "controller_failure", None), *getattr(x, "worker_failures", {}).values()]
    return None


def ray_train_dataset(cfg: ExperimentConfig):
    """The training split as a Ray Dataset (decoded rows); handed to TorchTrainer as ``datasets["train"]``."""
    import ray.data  # lazy: heavy, and `train_in_process` imports this module (steps_per_epoch) without starting Ray

    if not sys.stdout.isatty():  # per-operator progress bars turn logs and CI output into noise
        ray.data.DataContext.get_current().enable_progress_bars = False
    return in_memory_dataset(cfg) if materialize_train(cfg) else streaming_dataset(cfg)


def streaming_dataset(cfg: ExperimentConfig):
    """The training split streamed from its files every epoch, with no all-to-all pass: one row per Parquet row group,
    in a seeded order that changes every epoch (``randomize_block_order`` of that list, reseeded per execution),
    each read (page checksums verified, a bad file a `DataError` naming it) and decoded in bounded chunks; each
    worker then reshuffles locally (`train_batches`). Shards are stored in class order: the row-group order and the
    local shuffle buffer mix the classes a worker sees (a global ``random_shuffle`` mixed every clip, at a full
    all-to-all pass per epoch: seconds on a few hundred clips, a spill to disk on a large split).
    """
    import ray.data  # lazy: as in ray_train_dataset

    meta = validate_shards(cfg.data.path)
    groups = []
    for file in split_files(cfg.data.path, cfg.data.train_split, meta):
        with reading(file):
            groups += [{"file": str(file), "group": g} for g in range(open_shard(file).num_row_groups)]  # URI too
    chunk = max(1, DECODED_BATCH_BYTES // int(np.prod(meta["clip_shape"])))  # clips decoded at once
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    if cfg.data.shuffle:
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=cfg.data.seed, reseed_after_execution=True))
    return ds.map_batches(_ReadGroups(chunk), batch_size=1, batch_format="numpy")


class _ReadGroups:
    """``map_batches`` UDF: a batch of (file, row group) -> their clips, decoded ``chunk`` rows at a time."""

    def __init__(self, chunk: int):
        self.chunk = chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for file, group in zip(batch["file"], batch["group"]):
            try:
                with reading(file):
                    table = open_shard(file).read_row_group(int(group), columns=READ_COLUMNS)
                for start in range(0, table.num_rows, self.chunk):
                    yield decode_batch(table.slice(start, self.chunk))
            except ShardError as e:
                raise DataError(str(e) if str(file) in str(e) else f"{file}: {e}") from None


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
    same batches as an uninterrupted one when the shard is read by a single worker from the in-memory dataset. (The
    streaming one's row-group order is reseeded per execution, counted from the process's first epoch, and its
    parallel reads finish in no fixed order: a resumed epoch gets another order.)

    The batches stay on the CPU: the training loop moves each micro-batch to its device (`spklip.torchutil.to_device`:
    on CUDA pinned and non-blocking, so the copy does not wait for the step the GPU is still running).
    """
    yield from torch_batches(shard, cfg.data.batch_size, epoch=epoch, seed=cfg.data.seed, shuffle=cfg.data.shuffle,
                             drop_last=True, device="cpu")


def _collate_fn():
    from ray.data.collate_fn import NumpyBatchCollateFn  # lazy: Ray Data and Train are heavy imports

    class ClipCollate(NumpyBatchCollateFn):
        """Numpy batch -> tensors for ``spikes``/``label`` and lists for the strings (not default-collatable)."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return to_torch(batch)

    return ClipCollate()


def torch_batches(data: Any, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = True,
                  shuffle_buffer: int | None = None, drop_last: bool = False,
                  device: str | torch.device | None = None) -> Iterator[dict[str, Any]]:
    """Iterate torch batches from a Ray ``DataIterator`` (``ray.train.get_dataset_shard("train")``, one part of a
    ``streaming_split``) or a ``Dataset`` from `ray_train_dataset`.

    Args:
        data: a ``ray.data.DataIterator`` or ``ray.data.Dataset``.
        batch_size: clips per batch.
        epoch: mixed into the shuffle seed, so each epoch has its own order.
        seed: base shuffle seed (``DataCfg.seed``).
        shuffle: shuffle rows with a local buffer of ``shuffle_buffer`` rows (default ``max(4 * batch_size,
            256)``); False keeps the read order.
        drop_last: drop a last, smaller batch.
        device: where tensors go (default: Ray Train's device inside a Train worker, else CPU).

    Yields:
        ``{"spikes": uint8 [B, N, H, W], "label": int64 [B], "caption": list[str], "class_name": list[str],
        "clip_id": list[str]}``.
    """
    if device is None:
        from spklip.runtime.ray_private import in_ray_train_worker  # lazy: Ray Data and Train are heavy imports

        device = "cpu"
        if in_ray_train_worker():
            from ray.train.torch import get_device  # lazy: Ray Data and Train are heavy imports

            device = get_device()
    kwargs = {}
    if shuffle:
        kwargs = {"local_shuffle_buffer_size": shuffle_buffer or max(4 * batch_size, 256),
                  "local_shuffle_seed": seed * 1_000_003 + epoch}
    for batch in data.iter_torch_batches(batch_size=batch_size, collate_fn=_collate_fn(), drop_last=drop_last,
                                         device="cpu", **kwargs):
        batch["spikes"] = batch["spikes"].to(device)
        batch["label"] = batch["label"].to(device)
        yield batch


def steps_per_epoch(train_rows: int, cfg: ExperimentConfig, world: int) -> int:
    """Optimiser steps in one epoch: full batches per worker, grouped by ``optim.accum_steps``."""
    batches = (train_rows // max(world, 1)) // cfg.data.batch_size
    if batches == 0:
        raise ShardError(f"train split has {train_rows} clips: fewer than one batch of {cfg.data.batch_size} per "
                         f"worker ({world} workers); lower data.batch_size or scale.num_workers")
    return -(-batches // cfg.optim.accum_steps)
