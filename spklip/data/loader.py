"""Loading spike shards without Ray: a plain PyTorch ``Dataset`` (`SpikeShardDataset`) over one split, and the
columns and decode chunk that every reader shares.

It builds on `spklip.data.read` (its `to_torch` and `read_split`, page checksums verified), so its batches look like
every other path's::

    {"spikes": uint8 [B, N, H, W], "label": int64 [B], "caption": list[str], "class_name": list[str],
     "clip_id": list[str]}

The one Ray Data reader (what training uses, on the same decoding) is `spklip.runtime.reader`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from spklip.data.read import read_split, to_torch
from spklip.data.shards import decode_batch, validate_shards

READ_COLUMNS = ["clip_id", "spikes", "num_planes", "height", "width", "caption", "class_name", "label"]
DECODED_BATCH_BYTES = 32 * 2**20  # decoded spikes per map_batches call (bounds worker memory)


class SpikeShardDataset(torch.utils.data.Dataset):
    """One split of a shard folder as a map-style PyTorch Dataset (for a plain ``DataLoader``).

    The bit-packed column (N*H*W/8 bytes per clip) is held in memory; each item is unpacked on access. The default
    ``DataLoader`` collate gives the same batch dict as `spklip.runtime.reader.torch_batches`.

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

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """The clips at `indices` decoded at once, as one torch batch (``spikes`` uint8 [B, N, H, W], ...)."""
        n = len(self)
        idx = np.asarray(indices, dtype=np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if len(bad):
            raise IndexError(f"index {bad[0]} out of range for {n} clips")
        return to_torch(decode_batch(self.table.take(pa.array(idx % n, pa.int64()))))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Decode several clips at once (``DataLoader`` calls this with a whole batch of indices)."""
        batch = self.batch(indices)
        return [{"spikes": batch["spikes"][k], "label": batch["label"][k], "caption": batch["caption"][k],
                 "class_name": batch["class_name"][k], "clip_id": batch["clip_id"][k]} for k in range(len(indices))]


def epoch_batches(data: SpikeShardDataset, batch_size: int, epoch: int, *, seed: int = 0,
                  shuffle: bool = True) -> Iterator[dict[str, Any]]:
    """One epoch of `data` as full torch batches in a permutation seeded by ``(seed, epoch)`` (the same on every run
    and on a resumed one; file order without `shuffle`), a last, smaller batch dropped; each decoded
    when it is reached: the split stays bit-packed in memory (1/8 of its decoded size). The reader of the
    in-process paths (`spklip train` in local mode, `spklip.runtime.inprocess.train_in_process`), where no Ray Data
    runs.

    Yields:
        ``{"spikes": uint8 [B, N, H, W], "label": int64 [B], "caption": list[str], "class_name": list[str],
        "clip_id": list[str]}`` (on the CPU).
    """
    n = len(data)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield data.batch(order[start:start + batch_size])
