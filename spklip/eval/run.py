"""Evaluate a model on the splits of a shard folder: what ``spklip eval`` runs, and training after each epoch.

`evaluate_model` reads the splits through `spklip.data.read` and scores them with `spklip.eval.evaluate`;
`add_energy` adds the energy per clip of `spklip.model.energy`. Pure torch: no ray, no mlflow (logging the report
belongs to the training layer, `spklip.runtime.epoch_eval`; writing it to a folder to `spklip.eval.report`).
"""

from __future__ import annotations


import torch

from spklip.config import ExperimentConfig
from spklip.data.read import DatasetFacts, eval_batches
from spklip.eval.evaluate import MIN_UNSEEN_CLASSES, EvalReport, embed_clips, evaluate_embeddings
from spklip.model.energy import estimate_energy
from spklip.torchutil import eval_mode, unwrap


def evaluate_model(model: torch.nn.Module, cfg: ExperimentConfig, dataset: DatasetFacts, device: torch.device,
                   split: str | None = None, autocast_dtype: torch.dtype | None = None,
                   prefix: str = "val") -> EvalReport:
    """Embed the seen-class `split` (default ``data.val_split``) and the unseen split, then score everything.

    Args:
        model: A Spklip-like model (``encode_spikes``, ``encode_text``, ``class_embeddings``).
        cfg: The experiment config (data paths, eval settings).
        dataset: `spklip.data.read.dataset_info` output (class names, seen/unseen ids, split sizes).
        device: Where the model lives.
        split: Seen-class split to score (closed set, retrieval).
        autocast_dtype: bf16 on GPU, None for fp32.
        prefix: Metric prefix of the closed-set and retrieval metrics.
    """
    split = split or cfg.data.val_split
    bs = cfg.eval.batch_size
    seen = embed_clips(model, eval_batches(cfg.data.path, split, bs), device, autocast_dtype)
    unseen = None  # one unseen class or none: zero-/few-shot mean nothing (`evaluate_embeddings` notes why)
    if len(dataset.unseen_ids) >= MIN_UNSEEN_CLASSES and dataset.rows(cfg.data.zero_shot_split):
        unseen = embed_clips(model, eval_batches(cfg.data.path, cfg.data.zero_shot_split, bs), device,
                             autocast_dtype)
    report = evaluate_embeddings(model, seen, dataset.class_names, dataset.seen_ids, cfg.eval, unseen=unseen,
                                 unseen_ids=dataset.unseen_ids, prefix=prefix, seed=cfg.train.seed,
                                 class_factors=dataset.class_factors)
    if cfg.eval.energy:
        add_energy(report, model, cfg, split)
    return report


def add_energy(report: EvalReport, model: torch.nn.Module, cfg: ExperimentConfig, split: str) -> None:
    """Energy per clip (45 nm MAC/AC accounting of spklip.model.energy) on one real clip of `split`."""
    batch = next(iter(eval_batches(cfg.data.path, split, 1)))
    bare = unwrap(model)
    device = next(bare.parameters()).device
    with torch.no_grad(), eval_mode(bare):
        energy = estimate_energy(bare, batch["spikes"][:1].to(device))
    report.metrics.update({f"energy/{k}": v for k, v in energy.metrics().items()})
    report.tables["energy.md"] = energy.to_markdown()
