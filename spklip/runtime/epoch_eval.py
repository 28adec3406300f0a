"""Rank-0 evaluation during training, at the cadence of `evaluates_after` (``eval.every_steps`` or
``eval.every_epochs``, and the last step): precise BN (``eval.bn_recal_batches``), the protocol of `spklip.eval.run`
plus ``trainset/top1``, logged to MLflow (the tracking belongs to the training layer; spklip.eval stays free of it)."""

from __future__ import annotations

import time

from spklip.config import ExperimentConfig
from spklip.data.read import DatasetFacts, sample_batches
from spklip.eval.evaluate import EvalReport, closed_set, confusion_figure, embed_clips
from spklip.eval.precise_bn import recalibrate_batchnorm
from spklip.eval.run import evaluate_model
from spklip.runtime.tracking import Tracker
from spklip.train.timing import Phases


def evaluates_after(cfg: ExperimentConfig, epochs_done: int | None, step: int) -> bool:
    """Whether the run evaluates (and checkpoints) once optimiser step `step` is done; `epochs_done` is the number of
    epochs done when that step ended an epoch, None when it did not (mid-epoch).

    The run's last step always (``train.epochs`` epochs done, or ``train.max_steps`` reached); otherwise every
    ``eval.every_epochs``-th epoch's end when that is > 0, else every ``eval.every_steps``-th step (0: none)."""
    ev, train = cfg.eval, cfg.train
    at_epoch_end = epochs_done is not None
    if (at_epoch_end and epochs_done >= train.epochs) or (train.max_steps and step >= train.max_steps):
        return True
    if ev.every_epochs:
        return at_epoch_end and epochs_done % ev.every_epochs == 0
    return bool(ev.every_steps) and step % ev.every_steps == 0


class EpochEvaluator:
    """Evaluates on rank 0 and logs metrics (step-indexed) and artifacts (`artifact_folder`)."""

    def __init__(self, cfg: ExperimentConfig, dataset: DatasetFacts, tracker: Tracker):
        self.cfg, self.dataset, self.tracker = cfg, dataset, tracker

    def run(self, model, device, step: int, epoch: int, autocast_dtype=None,
            phases: Phases | None = None) -> dict[str, float]:
        """Evaluate and log; `phases` gains the seconds of precise BN (``bn``) and of the rest (``eval``: the
        protocol, ``trainset/top1`` and logging the metrics and artifacts)."""
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
        log_report_artifacts(self.tracker, report, self.artifact_folder(step, epoch))
        if phases is not None:
            if recal:  # precise BN off (or no BatchNorm): no time in it
                phases.add("bn", t1 - t0)
            phases.add("eval", time.perf_counter() - t1)
        return report.metrics

    def artifact_folder(self, step: int, epoch: int) -> str:
        """Where an evaluation's tables and plot go: named by the cadence's unit, ``eval/epoch_NNN`` (epochs done)
        with ``eval.every_epochs``, else ``eval/step_NNNNNNN`` (several evaluations may fall in one epoch)."""
        return f"eval/epoch_{epoch:03d}" if self.cfg.eval.every_epochs else f"eval/step_{step:07d}"

    def train_accuracy(self, model, device, autocast_dtype=None) -> dict[str, float]:
        """``trainset/top1``: prompt top-1 on ``eval.train_clips`` random training clips as stored (no augmentation),
        beside ``val/top1`` so over-fitting is visible."""
        data = self.cfg.data
        n = min(self.cfg.eval.train_clips, self.dataset.rows(data.train_split))
        if not n:
            return {}
        bs = min(self.cfg.eval.batch_size, n)
        batches = sample_batches(data.path, data.train_split, n // bs, bs, seed=data.seed + 1)
        emb = embed_clips(model, batches, device, autocast_dtype)
        metrics, _ = closed_set(model, emb, self.dataset.class_names, self.dataset.seen_ids, "trainset", (1,))
        return metrics

    def recalibrate(self, model, device, autocast_dtype=None) -> int:
        """Precise BN on ``eval.bn_recal_batches`` random training micro-batches (the same sample every time); 0:
        off, the running averages stay."""
        n = self.cfg.eval.bn_recal_batches
        if not n:
            return 0
        data = self.cfg.data  # the sample is read lazily: a model without BatchNorm reads nothing
        batches = sample_batches(data.path, data.train_split, n, data.batch_size, seed=data.seed)
        return recalibrate_batchnorm(model, batches, device, autocast_dtype)


def log_report_artifacts(tracker: Tracker, report: EvalReport, folder: str) -> None:
    """Tables as markdown, the confusion matrix as a PNG plot, all under `folder` of the run's artifacts."""
    if not tracker.enabled:
        return
    for name, text in report.tables.items():
        tracker.log_text(text, f"{folder}/{name}")
    if report.confusion is not None:
        import matplotlib.pyplot as plt  # lazy: heavy, and only a tracked run with a confusion matrix needs it

        fig = confusion_figure(report.confusion, report.confusion_classes)
        tracker.log_figure(fig, f"{folder}/confusion_matrix.png")
        plt.close(fig)
