"""Select on val, report on test: the test-split evaluation of a finished run's checkpoints.

Training evaluates on ``data.val_split`` and Ray keeps the checkpoint that scored best there (``train.metric``);
sweeps pick configurations on the same val numbers. Those numbers are selected on, so none of them is a result. When
a run ends, the driver scores two checkpoints once on ``data.test_split`` (and the unseen classes):

* ``test/...``: the best-on-val checkpoint, the one a user would ship (``best_checkpoint``);
* ``test_final/...``: the last checkpoint, so a reader sees what the selection changed.

Both run the protocol of `spklip.eval.run.evaluate_model` (closed set, retrieval, zero-/few-shot, chance levels and
clip counts), without the energy estimate (already logged, and the same on every split). The checkpoints hold the
BatchNorm statistics the training evaluation recalibrated, so a test number and its val twin come from one model.
Pure torch: the launcher logs what this returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from spklip.config import ExperimentConfig
from spklip.data import storage
from spklip.data.read import DatasetFacts
from spklip.eval.evaluate import EvalReport
from spklip.eval.run import evaluate_model
from spklip.train.checkpoint import model_from_checkpoint
from spklip.train.loop import resolve_precision

BEST, FINAL = "test", "test_final"  # metric prefixes: best-on-val checkpoint, last checkpoint


@dataclass
class TestReport:
    """The test metrics of a run's checkpoints (flat, ``test/top1``, ``test_final/top1``, ``chance/test/top1`` ...)
    with the evaluation tables per prefix and what was left out."""

    metrics: dict[str, float] = field(default_factory=dict)
    reports: dict[str, EvalReport] = field(default_factory=dict)  # prefix -> its report (tables, confusion)
    checkpoints: dict[str, str] = field(default_factory=dict)  # prefix -> the checkpoint it scored
    notes: list[str] = field(default_factory=list)

    def line(self, cfg: ExperimentConfig) -> str:
        """One line for the terminal: each checkpoint's top-1 and zero-shot with its chance level and clips."""
        parts = []
        for pre, what in ((BEST, "best-on-val checkpoint"), (FINAL, "last checkpoint")):
            if f"{pre}/top1" not in self.metrics:
                continue
            text = f"{what}: {pre}/top1 {_with_chance(self.metrics, f'{pre}/top1', pre)}"
            if f"{pre}/zeroshot/top1" in self.metrics:
                text += f", zeroshot {_with_chance(self.metrics, f'{pre}/zeroshot/top1', f'{pre}/zeroshot')}"
            parts.append(text)
        return f"test split {cfg.data.test_split!r}: " + "; ".join(parts + self.notes)


def _with_chance(metrics: dict[str, float], key: str, clips: str) -> str:
    return (f"{metrics[key]:.3f} (chance {metrics.get(f'chance/{key}', float('nan')):.3f}, "
            f"{int(metrics.get(f'clips/{clips}', 0))} clips)")


def relabel(metrics: dict[str, float], old: str, new: str) -> dict[str, float]:
    """Metric names of prefix `old` under `new`: ``test/top1`` -> ``test_final/top1``, ``chance/test/top1`` ->
    ``chance/test_final/top1``, ``clips/test`` -> ``clips/test_final``."""
    out = {}
    for key, value in metrics.items():
        head, _, rest = key.partition("/")
        if head in ("chance", "clips") and (rest == old or rest.startswith(old + "/")):
            key = f"{head}/{new}{rest[len(old):]}"
        elif head == old:
            key = f"{new}/{rest}"
        out[key] = value
    return out


def evaluate_on_test(cfg: ExperimentConfig, dataset: DatasetFacts, best: str | None, final: str | None,
                     device: torch.device | None = None) -> TestReport:
    """Score the best-on-val checkpoint (`best`) and the last one (`final`; folders or URIs) on the test split.

    A checkpoint that is both is evaluated once. Nothing to score (no checkpoint, an empty test split) gives an
    empty report with a note saying why.
    """
    out = TestReport()
    split = cfg.data.test_split
    if not dataset.rows(split):
        out.notes.append(f"no test numbers: the dataset has no clips in split {split!r}")
        return out
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    done: dict[str, str] = {}  # checkpoint -> prefix it was scored under
    for prefix, checkpoint in ((BEST, best), (FINAL, final)):
        if not checkpoint:
            continue
        if checkpoint in done:
            out.metrics.update(relabel({k: v for k, v in out.metrics.items()}, done[checkpoint], prefix))
            out.reports[prefix] = out.reports[done[checkpoint]]
        else:
            out.reports[prefix] = report = _evaluate(cfg, dataset, checkpoint, prefix, device)
            out.metrics.update(report.metrics)
            out.notes.extend(n for n in report.notes if n not in out.notes)
            done[checkpoint] = prefix
        out.checkpoints[prefix] = checkpoint
    if not out.checkpoints:
        out.notes.append("no test numbers: the run kept no checkpoint")
    return out


def _evaluate(cfg: ExperimentConfig, dataset: DatasetFacts, checkpoint: str, prefix: str,
              device: torch.device) -> EvalReport:
    with storage.local_copy(checkpoint) as local:  # a checkpoint in a bucket is downloaded first
        model, _, _ = model_from_checkpoint(local, map_location="cpu")
    run_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, energy=False))
    return evaluate_model(model.to(device), run_cfg, dataset, device, split=cfg.data.test_split,
                          autocast_dtype=resolve_precision(cfg.train.precision, device), prefix=prefix)
