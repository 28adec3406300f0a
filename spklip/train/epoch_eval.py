"""Rank-0 evaluation at the end of each epoch: the full protocol of spklip.eval plus MLflow logging."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from spklip.config import ExperimentConfig
from spklip.eval.evaluate import EvalReport, closed_set, confusion_figure, embed_clips, evaluate_embeddings
from spklip.eval.precise_bn import recalibrate_batchnorm
from spklip.outdir import check_replaceable, make_temp, read_marker, replace_dir
from spklip.train import data as train_data
from spklip.tracking import Tracker


def evaluate_model(model: torch.nn.Module, cfg: ExperimentConfig, dataset: dict[str, Any], device: torch.device,
                   split: str | None = None, autocast_dtype: torch.dtype | None = None,
                   prefix: str = "val") -> EvalReport:
    """Embed the seen-class `split` (default ``data.val_split``) and the unseen split, then score everything.

    Args:
        model: A Spklip-like model (``encode_spikes``, ``encode_text``, ``class_embeddings``).
        cfg: The experiment config (data paths, eval settings).
        dataset: `spklip.train.data.dataset_info` output as a dict (class names, seen/unseen ids, split sizes).
        device: Where the model lives.
        split: Seen-class split to score (closed set, retrieval).
        autocast_dtype: bf16 on GPU, None for fp32.
        prefix: Metric prefix of the closed-set and retrieval metrics.
    """
    split = split or cfg.data.val_split
    bs = cfg.eval.batch_size
    seen = embed_clips(model, train_data.eval_batches(cfg.data.path, split, bs), device, autocast_dtype)
    unseen = None
    if dataset["unseen_ids"] and dataset["split_rows"].get(cfg.data.zero_shot_split, 0):
        unseen = embed_clips(model, train_data.eval_batches(cfg.data.path, cfg.data.zero_shot_split, bs), device,
                             autocast_dtype)
    report = evaluate_embeddings(model, seen, dataset["class_names"], dataset["seen_ids"], cfg.eval, unseen=unseen,
                                 unseen_ids=dataset["unseen_ids"], prefix=prefix, seed=cfg.train.seed)
    if cfg.eval.energy:
        add_energy(report, model, cfg, split)
    return report


def add_energy(report: EvalReport, model: torch.nn.Module, cfg: ExperimentConfig, split: str) -> None:
    """Energy per clip (45 nm MAC/AC accounting of spklip.model.energy) on one real clip of `split`."""
    from spklip.model.energy import estimate_energy
    from spklip.train.checkpoint import unwrap

    batch = next(iter(train_data.eval_batches(cfg.data.path, split, 1)))
    bare = unwrap(model)
    device = next(bare.parameters()).device
    was_training = bare.training
    bare.eval()
    with torch.no_grad():
        energy = estimate_energy(bare, batch["spikes"][:1].to(device))
    bare.train(was_training)
    report.metrics.update({f"energy/{k}": v for k, v in energy.metrics().items()})
    report.tables["energy.md"] = energy.to_markdown()


class EpochEvaluator:
    """Evaluates on rank 0 after each epoch and logs metrics (step-indexed) and artifacts (per epoch)."""

    def __init__(self, cfg: ExperimentConfig, dataset: dict[str, Any], tracker: Tracker):
        self.cfg, self.dataset, self.tracker = cfg, dataset, tracker

    def run(self, model, device, step: int, epoch: int, autocast_dtype=None) -> dict[str, float]:
        t0 = time.perf_counter()
        recal = self.recalibrate(model, device, autocast_dtype)
        t1 = time.perf_counter()
        report = evaluate_model(model, self.cfg, self.dataset, device, autocast_dtype=autocast_dtype)
        report.metrics.update(self.train_accuracy(model, device, autocast_dtype))
        report.metrics["eval/seconds"] = time.perf_counter() - t1
        if recal:
            report.metrics["eval/bn_recal_seconds"] = t1 - t0
        report.metrics["epoch"] = float(epoch)
        self.tracker.log_metrics(report.metrics, step)
        log_report_artifacts(self.tracker, report, f"eval/epoch_{epoch:03d}")
        return report.metrics

    def train_accuracy(self, model, device, autocast_dtype=None) -> dict[str, float]:
        """``trainset/top1``: prompt top-1 on ``eval.train_clips`` random training clips as stored (no augmentation),
        beside ``val/top1`` so over-fitting is visible."""
        data = self.cfg.data
        n = min(self.cfg.eval.train_clips, self.dataset["split_rows"].get(data.train_split, 0))
        if not n:
            return {}
        bs = min(self.cfg.eval.batch_size, n)
        batches = train_data.sample_batches(data.path, data.train_split, n // bs, bs, seed=data.seed + 1)
        emb = embed_clips(model, batches, device, autocast_dtype)
        metrics, _ = closed_set(model, emb, self.dataset["class_names"], self.dataset["seen_ids"], "trainset", (1,))
        return metrics

    def recalibrate(self, model, device, autocast_dtype=None) -> int:
        """Precise BN on ``eval.bn_recal_batches`` random training micro-batches (the same sample every epoch)."""
        n = self.cfg.eval.bn_recal_batches
        if not n:
            return 0
        data = self.cfg.data  # the sample is read lazily: a model without BatchNorm reads nothing
        batches = train_data.sample_batches(data.path, data.train_split, n, data.batch_size, seed=data.seed)
        return recalibrate_batchnorm(model, batches, device, autocast_dtype)


def log_report_artifacts(tracker: Tracker, report: EvalReport, folder: str) -> None:
    """Tables as markdown, the confusion matrix as a PNG plot, all under `folder` of the run's artifacts."""
    if not tracker.enabled:
        return
    for name, text in report.tables.items():
        tracker.log_text(text, f"{folder}/{name}")
    if report.confusion is not None:
        import matplotlib.pyplot as plt
        fig = confusion_figure(report.confusion, report.confusion_classes)
        tracker.log_figure(fig, f"{folder}/confusion_matrix.png")
        plt.close(fig)


REPORT_MARKER = "spklip_eval.json"  # in every `write_report` folder: what wrote it and the files it holds


def report_files(root: Path) -> set[str] | None:
    """The files `write_report` wrote in `root` (listed by its marker), or None when `root` has no marker."""
    marker = read_marker(root / REPORT_MARKER, ("written_by", "files"))
    if not marker or marker["written_by"] != "spklip eval" or not isinstance(marker["files"], list):
        return None
    return {REPORT_MARKER, *map(str, marker["files"])}


def check_report_out(out_dir: str | Path) -> None:
    """Raise `spklip.outdir.RefusedError` unless `out_dir` is absent, empty or an earlier `write_report` folder."""
    check_replaceable(out_dir, report_files, "a spklip eval report")


def write_report(report: EvalReport, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write metrics (JSON), tables and the confusion plot to a folder (``spklip eval --out``), all or nothing.

    An existing `out_dir` is replaced only when it is empty or an earlier report (see `check_report_out`).
    `provenance` (checkpoint, data, split ...) goes into the marker file beside the list of files.
    """
    import json
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    check_report_out(out)
    tmp = make_temp(out)
    try:
        (tmp / "metrics.json").write_text(json.dumps(report.metrics, indent=1, sort_keys=True))
        for name, text in report.tables.items():
            (tmp / name).write_text(text)
        if report.confusion is not None:
            fig = confusion_figure(report.confusion, report.confusion_classes)
            fig.savefig(tmp / "confusion_matrix.png", dpi=100)
            plt.close(fig)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / REPORT_MARKER).write_text(json.dumps({"written_by": "spklip eval", "files": files,
                                                     **(provenance or {})}, indent=1, default=str))
        check_report_out(out)  # again: it may have changed while the report was computed
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
