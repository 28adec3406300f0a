"""Loading spike shards: Ray Data (``read_parquet`` -> bit-unpacking in ``map_batches`` -> torch batches) for
distributed training, and a plain PyTorch ``Dataset`` on the same decoding for single-process use.

Both build on `spklip.data.read` (its `to_torch` and `read_split`), so their batches look like every other
path's::

    {"spikes": uint8 [B, N, H, W], "label": int64 [B], "caption": list[str], "class_name": list[str],
     "clip_id": list[str]}

Per-epoch shuffling is a seeded local shuffle buffer (``torch_batches(..., epoch=e)``): the order changes every
epoch and is the same for the same (seed, epoch) on the same input order. Several training workers read disjoint
parts with ``Dataset.streaming_split(n)`` (Ray Train does this itself for ``get_dataset_shard``).

Ray is imported inside the functions that need it, never at module level: `spklip.data` is part of the model
library, which ``spklip eval``, `SpikeShardDataset` users and `train_in_process` import without Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch

from spklip.data import storage
from spklip.data.read import read_split, to_torch
from spklip.data.shards import decode_batch, split_files, validate_shards

READ_COLUMNS = ["clip_id", "spikes", "num_planes", "height", "width", "caption", "class_name", "label"]
DECODED_BATCH_BYTES = 32 * 2**20  # decoded spikes per map_batches call (bounds worker memory)


def ray_dataset(path: str | os.PathLike, split: str, *, materialize: bool = False) -> "ray.data.Dataset":  # noqa: F821
    """A Ray Dataset of one split, decoded: rows ``spikes`` uint8 [N, H, W], ``label``, ``caption``,
    ``class_name``, ``clip_id``.

    Args:
        path: a folder written by `spklip.data.shards.write_shards` (``spklip data build``).
        split: ``train``, ``val``, ``test`` or ``unseen``.
        materialize: decode once into the object store (8x the packed size) so that each epoch only iterates;
            without it every epoch re-runs the streaming read (a few seconds of Ray Data start-up per epoch, which
            dominates for small datasets).

    Raises:
        ShardError: a wrong schema or an empty split, before any Ray task starts.

    Ray Data's read tasks do not verify Parquet page checksums: Ray 2.60's Parquet reader (datasource v2) sets its
    own ``fragment_scan_options`` and drops the caller's. A corrupted page that still decodes passes here;
    ``spklip data inspect`` (and the small-dataset path that reads through `shards.read_shard`) catch it.
    """
    import ray.data  # lazy: see the module docstring

    meta = validate_shards(path)
    files = split_files(path, split, meta)
    clip_bytes = int(np.prod(meta["clip_shape"]))
    fs, _ = storage.resolve(files[0])  # one filesystem for the split (an object store's: its endpoint, no secret)
    ds = ray.data.read_parquet([storage.resolve(f)[1] for f in files], columns=READ_COLUMNS, filesystem=fs)
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=max(1, DECODED_BATCH_BYTES // clip_bytes))
    return ds.materialize() if materialize else ds


def _collate_fn():
    from ray.data.collate_fn import NumpyBatchCollateFn  # lazy: see the module docstring

    class ClipCollate(NumpyBatchCollateFn):
        """Numpy batch -> tensors for ``spikes``/``label`` and lists for the strings (not default-collatable)."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return to_torch(batch)

    return ClipCollate()


def torch_batches(data: Any, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = True,
                  shuffle_buffer: int | None = None, drop_last: bool = False,
                  device: str | torch.device | None = None) -> Iterator[dict[str, Any]]:
    """Iterate torch batches from a Ray ``DataIterator`` (``ray.train.get_dataset_shard("train")``, one part of a
    ``streaming_split``) or a ``Dataset`` from `ray_dataset`.

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
        from spklip.runtime.ray_private import in_ray_train_worker  # lazy: see the module docstring

        device = "cpu"
        if in_ray_train_worker():
            from ray.train.torch import get_device  # lazy: see the module docstring

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


class SpikeShardDataset(torch.utils.data.Dataset):
    """One split of a shard folder as a map-style PyTorch Dataset (for a plain ``DataLoader``).

    The bit-packed column (N*H*W/8 bytes per clip) is held in memory; each item is unpacked on access. The default
    ``DataLoader`` collate gives the same batch dict as `torch_batches`.

    Args:
        path: a shard folder.
        split: ``train``, ``val``, ``test`` or ``unseen``.

    Raises:
        ShardError: a wrong schema or an empty split.
    """

    def __init__(self, path: str | os.PathLike, split: str):
        self.path, self.split = Path(path), split
        self.meta = validate_shards(path)
        self.table = read_split(path, split, READ_COLUMNS, self.meta).combine_chunks()  # page checksums verified

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Decode several clips at once (``DataLoader`` calls this with a whole batch of indices)."""
        n = len(self)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} out of range for {n} clips")
        batch = to_torch(decode_batch(self.table.take(pa.array([i % n for i in indices], pa.int64()))))
        return [{"spikes": batch["spikes"][k], "label": batch["label"][k], "caption": batch["caption"][k],
                 "class_name": batch["class_name"][k], "clip_id": batch["clip_id"][k]} for k in range(len(indices))]
