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
from typing import Any

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

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Decode several clips at once (``DataLoader`` calls this with a whole batch of indices)."""
        n = len(self)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} out of range for {n} clips")
        batch = to_torch(decode_batch(self.table.take(pa.array([i % n for i in indices], pa.int64()))))
        return [{"spikes": batch["spikes"][k], "label": batch["label"][k], "caption": batch["caption"][k],
                 "class_name": batch["class_name"][k], "clip_id": batch["clip_id"][k]} for k in range(len(indices))]
