"""Reading spike shards into torch batches without Ray: the one path that training, evaluation, precise BN and
few-shot read through (`spklip.data.loader` and `spklip.runtime.reader` build the Ray paths on the same `to_torch`).

Every read verifies Parquet page checksums (`shards.read_shard` / `open_shard` under `shards.reading`, which names
the file on an error). Batches look the same on every path::

    {"spikes": uint8 [B, N, H, W], "label": int64 [B], "caption": list[str], "class_name": list[str],
     "clip_id": list[str]}

* `dataset_info` -> `DatasetFacts`: validate the shards against the model config once, before anything reads clips;
  the typed facts training, evaluation and tracking use from then on.
* `eval_batches`: a whole split in file order (evaluation).
* `sample_batches`: a seeded random sample of a split (precise BN, ``trainset/top1``).
* `decoded_split`: a whole split decoded at once (the in-memory Ray Dataset, `spklip.runtime.reader`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import torch

from spklip.config import ExperimentConfig
from spklip.data.phases import class_factors
from spklip.data.shards import ShardError, decode_batch, open_shard, read_shard, reading, split_files, validate_shards

Batch = dict[str, Any]  # see the module docstring


def to_torch(batch: dict[str, np.ndarray]) -> Batch:
    """Decoded numpy columns (`shards.decode_batch`, or a Ray batch of them) -> a torch batch.

    Tensors never alias a read-only buffer (Ray's object store, Arrow): such columns are copied, freshly decoded
    ones are used as they are.
    """
    return {"spikes": torch.from_numpy(np.require(batch["spikes"], np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])),
            "label": torch.from_numpy(np.array(batch["label"], dtype=np.int64)),  # a copy: small, often read-only
            "caption": [str(c) for c in batch["caption"]], "class_name": [str(c) for c in batch["class_name"]],
            "clip_id": [str(c) for c in batch["clip_id"]]}


def read_split(path: str | os.PathLike, split: str, columns: list[str] | None = None,
               meta: dict[str, Any] | None = None) -> pa.Table:
    """Every row of `split` (still bit-packed) in file order, page checksums verified."""
    tables = []
    for file in split_files(path, split, meta):
        with reading(file):
            tables.append(read_shard(file, columns=columns))
    return pa.concat_tables(tables)


def decoded_split(path: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """A whole split read and decoded at once, in file order (`decode_batch` columns)."""
    return decode_batch(read_split(path, split))


def eval_batches(path: str | os.PathLike, split: str, batch_size: int) -> Iterator[Batch]:
    """Every clip of `split` in file order, decoded, as torch batches of at most `batch_size` (streamed)."""
    for file in split_files(path, split):
        with reading(file):
            for record_batch in open_shard(file).iter_batches(batch_size=batch_size):  # page checksums verified
                yield to_torch(decode_batch(pa.Table.from_batches([record_batch])))


def sample_batches(path: str | os.PathLike, split: str, num_batches: int, batch_size: int,
                   seed: int) -> Iterator[Batch]:
    """`num_batches` batches of `batch_size` clips drawn at random (without replacement) from the whole split.

    Shards are stored in class order, so the first clips of a file are not a sample of the split. The rows are
    picked by a seeded draw over the split's row count, gathered still bit-packed (1 bit per pixel-plane), shuffled
    and decoded one batch at a time. Fewer batches come out when the split is smaller than the request.
    """
    files = split_files(path, split)
    rows = []
    for f in files:
        with reading(f):
            rows.append(open_shard(f).metadata.num_rows)
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


@dataclass(frozen=True)
class DatasetFacts:
    """What training, evaluation and tracking need to know of a validated shard set (`dataset_info`)."""

    path: str
    class_names: list[str]  # every class, by label
    seen_ids: list[int]  # labels of the seen classes (train / val / test splits)
    unseen_ids: list[int]  # labels held out for zero-/few-shot (sorted)
    split_rows: dict[str, int]  # clips per split
    fingerprint: str  # the shard set's content hash (16 hex)
    clip_shape: list[int]  # [N, H, W]
    class_factors: list[dict[str, str]] | None = None  # per class, what it is made of (`phases.class_factors`)

    def rows(self, split: str) -> int:
        """Clips in `split` (0 for a split the set does not have)."""
        return self.split_rows.get(split, 0)


def dataset_info(cfg: ExperimentConfig, eval_only: bool = False, split: str | None = None) -> DatasetFacts:
    """Validate the shards named by ``cfg.data`` against the model config and return what training and
    evaluation need (`DatasetFacts`).

    Args:
        cfg: The experiment config.
        eval_only: Only the evaluation split (`split`, default ``data.val_split``) must exist and be non-empty.
        split: The evaluation split to check.

    Raises:
        ShardError: wrong schema, missing or empty split, or clips of another size than the model expects.
    """
    meta = validate_shards(cfg.data.path)
    needed = [split or cfg.data.val_split] if eval_only else [cfg.data.train_split, cfg.data.val_split]
    for name in needed:
        split_files(cfg.data.path, name, meta)  # raises on an unknown or empty split
    want = [cfg.model.num_planes, cfg.model.height, cfg.model.width]
    if list(meta["clip_shape"]) != want:
        raise ShardError(f"{cfg.data.path}: clips are [N, H, W] = {list(meta['clip_shape'])} but the model is built "
                         f"for {want}; set model.num_planes/height/width or rebuild the dataset")
    factors = class_factors(meta)
    if factors is not None and len(factors) != len(meta["class_names"]):
        factors = None  # a builder dict that does not describe these classes: no breakdown rather than a wrong one
    return DatasetFacts(path=str(cfg.data.path), class_names=list(meta["class_names"]),
                        seen_ids=list(meta["seen_labels"]), unseen_ids=sorted(meta["unseen_labels"]),
                        split_rows=dict(meta["splits"]), fingerprint=meta["fingerprint"],
                        clip_shape=list(meta["clip_shape"]), class_factors=factors)
