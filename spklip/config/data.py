"""Data-side config: where the Parquet spike shards are and how batches are streamed into training."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataCfg:
    path: str = "runs/data/moving-digits"  # folder of Parquet spike shards (from `spklip data build`)
    train_split: str = "train"
    val_split: str = "val"  # split used for per-epoch evaluation
    zero_shot_split: str = "unseen"  # clips of classes held out of training (zero- and few-shot)
    batch_size: int = 16  # per worker
    shuffle: bool = True  # reshuffle every epoch
    seed: int = 0
