"""A run's dataset input: the shard folder it trained on as an ``mlflow.data`` dataset with a profile
(`spklip.runtime.tracking.tracker.Tracker.log_dataset` logs it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


def shard_set_dataset(info):
    """An ``mlflow.data`` dataset for a shard folder (its `spklip.data.read.DatasetFacts`): named by the folder, the
    fingerprint as digest, the folder as source, splits and class counts as its profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source  # on first use: mlflow.data is heavy
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # the local-file source is registered under two schemes: same class, a warning
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(info.path))
    profile = {"splits": dict(info.split_rows), "num_classes": len(info.class_names),
               "seen_classes": len(info.seen_ids), "unseen_classes": len(info.unseen_ids),
               "clip_shape": list(info.clip_shape or [])}
    return _ProfiledDataset(MetaDataset(source, name=Path(info.path).name, digest=info.fingerprint), profile)


class _ProfiledDataset:
    """A `MetaDataset` with a profile (MetaDataset carries none); all `Tracker.log_dataset` reads is `to_dict`."""

    def __init__(self, dataset, profile: dict[str, Any]):
        self.dataset, self.profile = dataset, profile
        self.name, self.digest, self.source = dataset.name, dataset.digest, dataset.source

    def to_dict(self) -> dict[str, Any]:
        return {**self.dataset.to_dict(), "profile": json.dumps(self.profile)}
