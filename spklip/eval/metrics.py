"""Evaluation maths as pure torch functions on score matrices (no model, no I/O).

Conventions: a score matrix has one row per query and one column per candidate; larger is better. Ranks are
1-based. A query's rank is 1 + the number of non-positive candidates scoring strictly higher than its best
positive candidate, so duplicate captions (several correct clips for one text) are not punished.
"""

from __future__ import annotations

from typing import Iterable

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true column is among the k highest scores.

    Args:
        logits: ``[N, C]`` scores of N clips against C classes.
        labels: ``[N]`` column index of each clip's true class.
        ks: Cut-offs; a k above C counts as C (always correct).

    Returns:
        ``{k: accuracy in [0, 1]}``.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy: no clips to score")
    true_score = logits.gather(1, labels.long()[:, None])  # [N, 1]
    rank = (logits > true_score).sum(dim=1) + 1  # [N]: 1 + classes scoring strictly higher
    return {int(k): (rank <= k).float().mean().item() for k in ks}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + pred.long()  # [N] flat cell index
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)  # [C, C]


def ranks_of_positives(scores: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each query's best positive candidate.

    Args:
        scores: ``[Q, G]`` query-by-candidate scores.
        positives: ``[Q, G]`` bool, True where the candidate is correct for the query. Default: the diagonal
            (query i matches candidate i), which needs Q == G.

    Returns:
        ``[Q]`` int64 ranks.
    """
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"diagonal positives need a square score matrix, got {tuple(scores.shape)}")
        positives = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must match scores {tuple(scores.shape)}")
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every query needs at least one positive candidate")
    best_pos = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # [Q, 1]
    return ((scores > best_pos) & ~positives).sum(dim=1) + 1  # [Q]


def retrieval_metrics(scores: torch.Tensor, positives: torch.Tensor | None = None,
                      ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k as ``R{k}`` (fraction of queries whose best positive ranks within k), median and mean rank."""
    ranks = ranks_of_positives(scores, positives).float()
    out = {f"R{int(k)}": (ranks <= k).float().mean().item() for k in ks}  # "@" is not allowed in MLflow keys
    out["median_rank"] = ranks.median().item() if ranks.numel() % 2 else ranks.quantile(0.5).item()
    out["mean_rank"] = ranks.mean().item()
    return out


def text_video_retrieval(video_features: torch.Tensor, text_features: torch.Tensor, captions: list[str],
                         ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Both retrieval directions over paired clips and captions (row i of each belongs together).

    A candidate counts as correct when its caption string equals the query's own caption (identical captions
    make identical text embeddings, so the pairing is otherwise arbitrary).

    Returns:
        Keys ``t2v/R{k}``, ``t2v/median_rank``, ``t2v/mean_rank`` and the same for ``v2t``.
    """
    if video_features.shape[0] != text_features.shape[0] or len(captions) != video_features.shape[0]:
        raise ValueError("video features, text features and captions must have the same length")
    codes = torch.as_tensor(_caption_codes(captions), device=video_features.device)  # [N] caption id per clip
    same = codes[:, None] == codes[None, :]  # [N, N] caption i == caption j
    sim = text_features @ video_features.T  # [N_text, N_video]
    out = {f"t2v/{k}": v for k, v in retrieval_metrics(sim, same, ks).items()}
    out.update({f"v2t/{k}": v for k, v in retrieval_metrics(sim.T, same, ks).items()})
    return out


def _caption_codes(captions: list[str]) -> list[int]:
    lookup: dict[str, int] = {}
    return [lookup.setdefault(c, len(lookup)) for c in captions]
