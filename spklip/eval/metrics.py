"""Evaluation maths as pure torch functions on score matrices (no model, no I/O).

Conventions: a score matrix has one row per query and one column per candidate; larger is better. Ranks are
1-based. A query's rank is 1 + the number of non-positive candidates scoring strictly higher than its best
positive candidate, so duplicate captions (several correct clips for one text) are not punished.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true column is among the k highest scores.

    Args:
        logits: ``[N, C]`` scores of N clips against C classes.
        labels: ``[N]`` column index of each clip's true class.
        ks: Cut-offs; a k above C counts as C (always correct).

    Returns:
        ``{k: accuracy in [0, 1]}``. A clip with a NaN or infinite score anywhere in its row is wrong at every k (a
        diverged model scores 0, not 1: NaN compares False, so it used to rank first).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy: no clips to score")
    true_score = logits.gather(1, labels.long()[:, None])  # [N, 1]
    rank = (logits > true_score).sum(dim=1) + 1  # [N]: 1 + classes scoring strictly higher
    finite = torch.isfinite(logits).all(dim=1)  # [N]: a row with NaN/inf is wrong whatever k
    return {int(k): ((rank <= k) & finite).float().mean().item() for k in ks}


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
        ``[Q]`` int64 ranks. Non-finite scores count against the query: a NaN/inf negative candidate ranks above its
        positives, a NaN/inf positive does not count, and a query with no finite positive gets rank G + 1 (below
        every candidate: never retrieved within G).
    """
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"diagonal positives need a square score matrix, got {tuple(scores.shape)}")
        positives = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must match scores {tuple(scores.shape)}")
    if not bool(positives.any(dim=1).all()):
        raise ValueError("every query needs at least one positive candidate")
    finite = torch.isfinite(scores)  # [Q, G]
    best_pos = scores.masked_fill(~(positives & finite), float("-inf")).max(dim=1, keepdim=True).values  # [Q, 1]
    above = ((scores > best_pos) | ~finite) & ~positives  # [Q, G]: a non-finite negative never helps
    worst = torch.full_like(best_pos[:, 0], scores.shape[1] + 1, dtype=torch.int64)  # [Q]
    return torch.where(torch.isfinite(best_pos[:, 0]), above.sum(dim=1) + 1, worst)  # [Q]


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
    """Clip-level retrieval, both directions, over paired clips and captions (row i of each belongs together).

    Every clip is a query and every clip's caption a candidate, duplicates included; a candidate counts as correct
    when its caption string equals the query's own caption. With class-level captions the figure depends on the
    number of clips per class (R@5 is "class top-1" once classes have >= 5 clips): it is not the paper's R@k. See
    `class_retrieval` for the figure that is.

    Returns:
        Keys ``t2v_clip/R{k}``, ``t2v_clip/median_rank``, ``t2v_clip/mean_rank`` and the same for ``v2t_clip``.
    """
    if video_features.shape[0] != text_features.shape[0] or len(captions) != video_features.shape[0]:
        raise ValueError("video features, text features and captions must have the same length")
    codes = torch.as_tensor(_caption_codes(captions), device=video_features.device)  # [N] caption id per clip
    same = codes[:, None] == codes[None, :]  # [N, N] caption i == caption j
    sim = text_features @ video_features.T  # [N_text, N_video]
    out = {f"t2v_clip/{k}": v for k, v in retrieval_metrics(sim, same, ks).items()}
    out.update({f"v2t_clip/{k}": v for k, v in retrieval_metrics(sim.T, same, ks).items()})
    return out


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``[Q]`` average precision of each query's ranking of its candidates.

    AP = mean over the query's positives of the precision at the positive's position. Ties are broken against the
    positives (a positive tied with a negative ranks after it) and a NaN/inf score ranks last, so a constant or
    diverged scorer earns the chance-level AP, never 1.

    Args:
        scores: ``[Q, G]`` query-by-candidate scores.
        positives: ``[Q, G]`` bool, at least one True per row.
    """
    if positives.shape != scores.shape or not bool(positives.any(dim=1).all()):
        raise ValueError("average_precision: positives must match scores and hold a positive in every row")
    clean = torch.where(torch.isfinite(scores), scores.float(), torch.full_like(scores.float(), float("-inf")))
    neg_first = torch.argsort(positives.int(), dim=1, stable=True)  # [Q, G] negatives before positives
    by_score = torch.argsort(-clean.gather(1, neg_first), dim=1, stable=True)  # [Q, G] ties keep negatives first
    hits = positives.gather(1, neg_first.gather(1, by_score)).float()  # [Q, G] 1 where the ranked item is positive
    precision = hits.cumsum(dim=1) / torch.arange(1, scores.shape[1] + 1, device=scores.device)  # [Q, G]
    return (precision * hits).sum(dim=1) / hits.sum(dim=1)  # [Q]


def class_retrieval(video_features: torch.Tensor, text_features: torch.Tensor, captions: list[str],
                    ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Class-level retrieval: each distinct caption once, whatever the number of clips that share it.

    * ``t2v_class``: every distinct caption queries all clips; R@k is the fraction of captions whose best clip ranks
      within k, and ``t2v_class/mAP`` the mean over captions of the average precision of all their clips.
    * ``v2t_class``: every clip queries the distinct captions; R@k is the fraction of clips whose caption ranks
      within k of them (the closed-set top-k, with captions in place of prompts).
    Neither figure changes with the number of clips per class, unlike `text_video_retrieval`.

    Returns:
        ``t2v_class/R{k}``, ``t2v_class/mAP``, ``t2v_class/median_rank``, ``v2t_class/R{k}``, ``v2t_class/median_rank``
        (and ``mean_rank`` for both).
    """
    if video_features.shape[0] != text_features.shape[0] or len(captions) != video_features.shape[0]:
        raise ValueError("video features, text features and captions must have the same length")
    codes = torch.as_tensor(_caption_codes(captions), device=video_features.device)  # [N] caption id per clip
    num = int(codes.max()) + 1
    first = torch.full((num,), codes.numel(), dtype=torch.long, device=codes.device)
    first = first.scatter_reduce(0, codes, torch.arange(codes.numel(), device=codes.device), "amin")  # [C]
    sim = text_features[first] @ video_features.T  # [C, N]: each distinct caption against every clip
    positive = torch.arange(num, device=codes.device)[:, None] == codes[None, :]  # [C, N]
    out = {f"t2v_class/{k}": v for k, v in retrieval_metrics(sim, positive, ks).items()}
    out["t2v_class/mAP"] = average_precision(sim, positive).mean().item()
    out.update({f"v2t_class/{k}": v for k, v in retrieval_metrics(sim.T, positive.T, ks).items()})
    return out


def class_retrieval_chance(captions: list[str], ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """What a random scorer expects of `class_retrieval`'s R@k (a uniformly random order of the candidates).

    ``v2t_class/R{k}``: k of the C distinct captions, ``min(k, C) / C``. ``t2v_class/R{k}``: caption c with n_c of
    the N clips is found within k with probability ``1 - C(N - n_c, k) / C(N, k)``, averaged over captions.
    ``t2v_class/mAP``: about the mean positive fraction ``n_c / N`` (exact in expectation for large N).
    """
    counts = torch.bincount(torch.as_tensor(_caption_codes(captions))).tolist()  # clips per distinct caption
    n, c = sum(counts), len(counts)
    out = {}
    for k in ks:  # a few cut-offs over C distinct captions: exact binomials, not a hot path
        kk = min(int(k), n)
        out[f"t2v_class/R{int(k)}"] = sum(1 - math.comb(n - nc, kk) / math.comb(n, kk) for nc in counts) / c
        out[f"v2t_class/R{int(k)}"] = min(int(k), c) / c
    out["t2v_class/mAP"] = sum(nc / n for nc in counts) / c
    return out


def topk_chance(num_classes: int, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """A random scorer's top-k accuracy over `num_classes` classes: ``min(k, C) / C``."""
    return {int(k): min(int(k), num_classes) / num_classes for k in ks}


def _caption_codes(captions: list[str]) -> list[int]:
    lookup: dict[str, int] = {}
    return [lookup.setdefault(c, len(lookup)) for c in captions]


def factor_accuracy(cm: torch.Tensor, factors: list[dict[str, str]]) -> dict[str, tuple[float, float]]:
    """Per-factor accuracy of a classification from its ``[C, C]`` confusion matrix (row = true class): for each
    factor (e.g. ``digit``, ``phase1``, ``phase2``), the share of clips whose predicted class has the true class's
    value of it, and what a uniform random scorer gets (the mean over clips of the share of candidate classes that
    share it). `factors[i]` describes class i of the matrix. A factor with one value over the candidates (always
    right, whatever the model) is left out."""
    n = cm.sum().clamp(min=1).double()
    rows = cm.sum(dim=1).double()  # [C] clips per true class
    out = {}
    for name in factors[0] if factors else ():
        values = [f[name] for f in factors]
        if len(set(values)) < 2:
            continue
        codes = torch.tensor([sorted(set(values)).index(v) for v in values])  # [C]
        same = (codes[:, None] == codes[None, :]).double()  # [C, C] true class x predicted class share the value
        acc = float((cm.double() * same).sum() / n)
        chance = float((rows * same.mean(dim=1)).sum() / n)
        out[name] = (acc, chance)
    return out
