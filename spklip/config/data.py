"""Data-side config: where the Parquet spike shards are and how batches are streamed into training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spklip.config.base import check_nonempty, check_range


@dataclass(frozen=True)
class DataCfg:
    path: str = "runs/data/moving-digits"  # folder of Parquet spike shards (from `spklip data build`)
    train_split: str = "train"
    val_split: str = "val"  # split used for per-epoch evaluation, checkpoint and sweep selection
    test_split: str = "test"  # scored once at the end of a run (the chosen and the last checkpoint): the result
    zero_shot_split: str = "unseen"  # clips of classes held out of training (zero- and few-shot)
    batch_size: int = 16  # per worker
    shuffle: bool = True  # reshuffle every epoch
    seed: int = 0
    # decode the training split once into Ray's object store, shuffled once, and only iterate it each epoch (no
    # per-epoch streaming read and all-to-all shuffle: seconds per epoch on small sets). auto: when the decoded
    # split is at most `materialize_max_mb`
    materialize: bool | Literal["auto"] = "auto"
    materialize_max_mb: int = 1024

    def __post_init__(self):
        check_range("data.batch_size", self.batch_size, 1)
        check_range("data.seed", self.seed, 0)  # numpy seed sequences take no negative entropy
        check_range("data.materialize_max_mb", self.materialize_max_mb, 0)
        for key in ("path", "train_split", "val_split", "test_split", "zero_shot_split"):
            check_nonempty(f"data.{key}", getattr(self, key))
