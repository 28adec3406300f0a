"""Evaluation protocol of a trained model: embed clips once, then every metric from the embeddings.

* Closed set (the paper's protocol): each clip of the seen-class split is scored against the text-prompt
  embeddings of all seen classes; top-1 / top-5 and a confusion matrix.
* Zero-shot: clips of the ``unseen`` split against the prompts of the unseen classes only (never trained on).
* Few-shot: the prompt-initialised linear head of `spklip.eval.fewshot` on the unseen clips, mean and std over
  ``eval.few_shot_seeds`` episodes for each k in ``eval.few_shot_ks``.
  Zero- and few-shot need at least `MIN_UNSEEN_CLASSES` unseen classes: over one class every clip ranks first, so
  the metrics are left out (with a note in ``EvalReport.notes``) rather than reported as 1.0.
* Retrieval on the seen split: clip-level (``t2v_clip``/``v2t_clip``: every clip/caption pair, the figure moves with
  clips per class) and class-level (``t2v_class``/``v2t_class``: each distinct caption once, plus mAP), see
  `spklip.eval.metrics`.
* Beside each accuracy, what a random scorer gets (``chance/<metric>``) and the clips behind it (``clips/<split>``).
Every model of the registry (SPKLIP, FSVE, baselines) goes through the same function.

Metric names: the closed set and retrieval are ``<prefix>/...`` (``val/top1``); zero- and few-shot are
``zeroshot/top1`` and ``fewshot/{k}shot_top1`` for the ``val`` evaluation of training, ``<prefix>/zeroshot/top1``
otherwise (``test/zeroshot/top1``: the test-time evaluation of the chosen checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from spklip.config import EvalCfg
from spklip.eval.fewshot import few_shot_eval
from spklip.eval.metrics import (class_retrieval, class_retrieval_chance, confusion_matrix, factor_accuracy,
                                 text_video_retrieval, topk_accuracy, topk_chance)
from spklip.torchutil import eval_mode, maybe_autocast, unwrap


@dataclass
class Embedded:
    """A split embedded once: clip features ``[N, D]``, caption features ``[N, D]``, labels ``[N]``, captions."""

    features: torch.Tensor
    text_features: torch.Tensor
    labels: torch.Tensor
    captions: list[str]


@dataclass
class EvalReport:
    """Flat metrics (``val/top1`` ...) plus the tables and confusion matrix logged as artifacts."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # file name -> markdown text
    confusion: torch.Tensor | None = None  # [C, C] counts over the seen classes
    confusion_classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (one line each)


MIN_UNSEEN_CLASSES = 2  # zero-/few-shot over fewer classes is 1.0 whatever the model: left out


def open_set_prefix(prefix: str) -> str:
    """Where zero- and few-shot metrics go: unprefixed for the ``val`` evaluation (``zeroshot/top1``, the names the
    training progress, sweeps and MLflow charts use), under `prefix` for any other (``test/zeroshot/top1``)."""
    return "" if prefix == "val" else f"{prefix}/"


@torch.no_grad()
def embed_clips(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
                autocast_dtype: torch.dtype | None = None) -> Embedded:
    """Run the visual and text encoders over every batch (eval mode, no grad) and stack the results on CPU."""
    feats, texts, labels, captions = [], [], [], []
    with eval_mode(unwrap(model)) as model, maybe_autocast(device, autocast_dtype):
        for batch in batches:
            feats.append(model.encode_spikes(batch["spikes"].to(device)).float().cpu())  # [B, D]
            texts.append(model.encode_text(list(batch["caption"])).float().cpu())  # [B, D]
            labels.append(torch.as_tensor(batch["label"]).long().cpu())
            captions.extend(batch["caption"])
    if not feats:
        raise ValueError("evaluation split is empty: no clips to embed")
    return Embedded(torch.cat(feats), torch.cat(texts), torch.cat(labels), captions)


@torch.no_grad()
def class_prompt_embeddings(model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    """``[C, D]`` template-averaged, normalised prompt embeddings (the model's cached `class_embeddings`)."""
    with eval_mode(unwrap(model)) as model:
        return model.class_embeddings(list(names)).float().cpu()


def _remap(labels: torch.Tensor, class_ids: list[int], split: str) -> torch.Tensor:
    """Global label ids -> positions in `class_ids`; a clip of another class is an error naming the split."""
    lookup = torch.full((max(max(class_ids), int(labels.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(class_ids)] = torch.arange(len(class_ids))
    out = lookup[labels]
    if bool((out < 0).any()):
        bad = sorted(set(labels[out < 0].tolist()))
        raise ValueError(f"split {split!r} holds clips of labels {bad[:5]} that are not among its candidate classes")
    return out


def closed_set(model, data: Embedded, class_names: list[str], class_ids: list[int], prefix: str,
               top_ks: tuple[int, ...] = (1, 5)) -> tuple[dict[str, float], torch.Tensor]:
    """Prompt classification over `class_ids`; returns ``{prefix/top{k}}`` with ``chance/prefix/top{k}`` beside
    each, and the ``[C, C]`` confusion matrix. A k of C or more (always right) is left out, top-1 never."""
    top_ks = tuple(k for k in top_ks if k == 1 or k < len(class_ids))
    names = [class_names[i] for i in class_ids]
    logits = data.features @ class_prompt_embeddings(model, names).T  # [N, C]
    target = _remap(data.labels, class_ids, prefix)
    acc = topk_accuracy(logits, target, top_ks)
    cm = confusion_matrix(logits.argmax(dim=1), target, len(class_ids))
    metrics = {f"{prefix}/top{k}": v for k, v in acc.items()}
    metrics.update({f"chance/{prefix}/top{k}": v for k, v in topk_chance(len(class_ids), top_ks).items()})
    return metrics, cm


def logit_scale_of(model: torch.nn.Module) -> float:
    """The model's learned multiplier of cosine similarities (exp of its log-scale, clamped as in training)."""
    model = unwrap(model)
    if hasattr(model, "scale"):
        return float(model.scale().detach())
    return float(torch.as_tensor(model.logit_scale).detach().exp().clamp(max=100.0))


def evaluate_embeddings(model, seen: Embedded, class_names: list[str], seen_ids: list[int], cfg: EvalCfg, *,
                        unseen: Embedded | None = None, unseen_ids: list[int] | None = None, prefix: str = "val",
                        seed: int = 0, class_factors: list[dict[str, str]] | None = None) -> EvalReport:
    """All metrics of the protocol from embedded splits (see the module docstring). With `class_factors` (per
    class, what it is made of: `spklip.data.phases.class_factors`), zero-shot also gets a per-factor breakdown."""
    report = EvalReport(confusion_classes=[class_names[i] for i in seen_ids])
    metrics, report.confusion = closed_set(model, seen, class_names, seen_ids, prefix)
    report.metrics.update(metrics)
    report.metrics[f"clips/{prefix}"] = float(len(seen.labels))
    retrieval = text_video_retrieval(seen.features, seen.text_features, seen.captions, cfg.retrieval_ks)
    retrieval.update(class_retrieval(seen.features, seen.text_features, seen.captions, cfg.retrieval_ks))
    chance = class_retrieval_chance(seen.captions, cfg.retrieval_ks)
    report.metrics.update({f"{prefix}/{k}": v for k, v in retrieval.items()})
    report.metrics.update({f"chance/{prefix}/{k}": v for k, v in chance.items()})
    report.tables["retrieval.md"] = _markdown(["metric", "value", "chance"],
                                              [(k, v, chance.get(k, "")) for k, v in sorted(retrieval.items())])
    if unseen_ids and len(unseen_ids) < MIN_UNSEEN_CLASSES:
        report.notes.append(f"zero-/few-shot left out: {len(unseen_ids)} unseen class (a ranking over one class is "
                            f"always right); build the data with >= {MIN_UNSEEN_CLASSES} unseen classes")
    elif unseen is not None and unseen_ids:
        _open_set(report, model, unseen, class_names, unseen_ids, cfg, open_set_prefix(prefix), seed, class_factors)
    return report


def _open_set(report: EvalReport, model, unseen: Embedded, class_names: list[str], unseen_ids: list[int],
              cfg: EvalCfg, pre: str, seed: int, class_factors: list[dict[str, str]] | None = None) -> None:
    """Zero-shot and few-shot on the unseen classes, with their chance level and clip count, into `report`; with
    `class_factors`, which factors of the unseen classes the zero-shot choice got right (``zeroshot/factor/digit``,
    ``.../phase1``, ``.../phase2``: e.g. the digit right but the order of the phases wrong)."""
    zs, cm = closed_set(model, unseen, class_names, unseen_ids, "zeroshot")
    if class_factors:
        factors = factor_accuracy(cm, [class_factors[i] for i in unseen_ids])
        for name, (acc, chance) in factors.items():
            zs[f"zeroshot/factor/{name}"], zs[f"chance/zeroshot/factor/{name}"] = acc, chance
        if factors:
            report.tables["zeroshot_factors.md"] = _markdown(
                ["factor", "right", "chance"], [(name, acc, chance) for name, (acc, chance) in factors.items()])
    report.metrics.update({(f"chance/{pre}{k[len('chance/'):]}" if k.startswith("chance/") else f"{pre}{k}"): v
                           for k, v in zs.items()})
    report.metrics[f"clips/{pre}zeroshot"] = float(len(unseen.labels))
    prompts = class_prompt_embeddings(model, [class_names[i] for i in unseen_ids])
    fs = few_shot_eval(unseen.features, _remap(unseen.labels, unseen_ids, "unseen"), prompts,
                       ks=cfg.few_shot_ks, seeds=cfg.few_shot_seeds, steps=cfg.few_shot_steps,
                       lr=cfg.few_shot_lr, logit_scale=logit_scale_of(model), base_seed=seed,
                       head=cfg.few_shot_head, prior=cfg.few_shot_prior)
    for k, res in fs.items():
        if res is not None:
            report.metrics[f"{pre}fewshot/{k}shot_top1"] = res["mean"]
            report.metrics[f"{pre}fewshot/{k}shot_top1_std"] = res["std"]
            report.metrics[f"chance/{pre}fewshot/{k}shot_top1"] = 1.0 / len(unseen_ids)
    report.tables["few_shot.md"] = _markdown(
        ["k", "top-1 mean", "top-1 std", "zero-shot on same queries", "queries/episode"],
        [(k, "skipped: a class has <= k clips", "", "", "") if r is None else
         (k, r["mean"], r["std"], r["zero_shot_mean"], r["queries"]) for k, r in fs.items()])


def _markdown(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def confusion_figure(cm: torch.Tensor, names: list[str]):
    """A matplotlib figure of the confusion matrix (rows true, columns predicted)."""
    import matplotlib  # lazy: heavy, and only the confusion plot needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in torch.nonzero(cm).tolist():
        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return fig
