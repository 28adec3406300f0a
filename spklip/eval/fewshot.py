"""Few-shot protocol on frozen features: a prompt-initialised linear head, trained per episode.

Protocol (stated once, used everywhere):
  * Clips of the held-out (``unseen``) classes are embedded once with the frozen visual encoder.
  * An episode (one seed) draws k support clips per class uniformly without replacement; every other clip of
    those classes is a query. k is skipped when some class has no clip left for the query set.
  * Head ``mix`` (default): class c's weight is ``normalize(prior * t_c + sum of its k support features)``, the
    text-prompt embedding t_c counted as ``prior`` pseudo-clips (a conjugate-prior mean). k = 0 is exactly the
    zero-shot classifier; as k grows the weight moves to the visual prototype, so few-shot does not fall below
    zero-shot when the support set is small and improves with k when the features cluster by class.
  * Head ``linear``: ``logits = s * f @ W.T + b`` with ``W`` initialised to the prompt embeddings and ``s`` the
    model's logit scale (step 0 is the zero-shot classifier), trained with full-batch AdamW on the support clips
    for ``steps`` steps at learning rate ``lr`` (unregularised: it can overfit one or two support clips).
  * The score is query top-1; mean and standard deviation over ``seeds`` episodes are reported.
All episodes of one k are trained together as one batched problem (``[S, C, D]`` weights), not in a Python loop.
"""

from __future__ import annotations

from typing import Iterable

import torch


def sample_support(labels: torch.Tensor, k: int, seeds: int, base_seed: int = 0) -> torch.Tensor:
    """Boolean ``[S, N]`` mask: True for the k support clips per class chosen in each of S episodes."""
    gen = torch.Generator().manual_seed(base_seed * 1000 + k)
    n = labels.numel()
    noise = torch.rand(seeds, n, generator=gen)  # [S, N] random order inside each class
    order = torch.argsort(labels.double()[None, :] * 2 + noise, dim=1)  # [S, N] grouped by class, shuffled within
    sorted_labels = labels[order]  # [S, N]
    counts = torch.bincount(labels)  # [C]
    starts = torch.cumsum(counts, 0) - counts  # [C] first sorted position of each class
    pos_in_class = torch.arange(n)[None, :] - starts[sorted_labels]  # [S, N]
    mask = torch.zeros(seeds, n, dtype=torch.bool)
    mask.scatter_(1, order, pos_in_class < k)  # back to clip order
    return mask


def train_heads(features: torch.Tensor, labels: torch.Tensor, support: torch.Tensor, class_embeddings: torch.Tensor,
                logit_scale: float, steps: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train S linear heads at once on their support sets; returns weights ``[S, C, D]`` and biases ``[S, C]``."""
    s_count = support.shape[0]
    weight = class_embeddings[None].repeat(s_count, 1, 1).clone().requires_grad_(True)  # [S, C, D]
    bias = torch.zeros(s_count, class_embeddings.shape[0], requires_grad=True)  # [S, C]
    opt = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=0.0)
    sup_weight = support.float() / support.float().sum(dim=1, keepdim=True)  # [S, N] mean over support clips
    with torch.enable_grad():
        for _ in range(steps):
            logits = logit_scale * torch.einsum("nd,scd->snc", features, weight) + bias[:, None, :]  # [S, N, C]
            ce = torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), labels[None].expand(s_count, -1),
                                                   reduction="none")  # [S, N]
            loss = (ce * sup_weight).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weight.detach(), bias.detach()


def mix_heads(features: torch.Tensor, labels: torch.Tensor, support: torch.Tensor, class_embeddings: torch.Tensor,
              prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[S, C, D]`` = normalize(prior * prompt + sum of the class's support features), biases zero."""
    onehot = torch.nn.functional.one_hot(labels, class_embeddings.shape[0]).float()  # [N, C]
    sums = torch.einsum("sn,nc,nd->scd", support.float(), onehot, features)  # [S, C, D] support sums per class
    weight = torch.nn.functional.normalize(prior * class_embeddings[None] + sums, dim=-1)
    return weight, torch.zeros(support.shape[0], class_embeddings.shape[0])


def few_shot_eval(features: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor, *,
                  ks: Iterable[int] = (1, 2, 4, 8, 16), seeds: int = 5, steps: int = 100, lr: float = 1e-2,
                  logit_scale: float = 100.0, base_seed: int = 0, head: str = "mix",
                  prior: float = 1.0) -> dict[int, dict[str, float] | None]:
    """Few-shot top-1 for every k (see the module docstring for the protocol).

    Args:
        features: ``[N, D]`` L2-normalised clip embeddings of the held-out classes.
        labels: ``[N]`` class index in ``0..C-1`` (rows of `class_embeddings`).
        class_embeddings: ``[C, D]`` L2-normalised text-prompt embeddings.
        ks: Support clips per class.
        seeds: Episodes per k.
        steps: AdamW steps of each head.
        lr: Head learning rate.
        logit_scale: Multiplier of the cosine similarity (the model's learned scale).
        base_seed: Makes the episodes reproducible.
        head: ``mix`` (prompt + support prototypes) or ``linear`` (trained head); see the module docstring.
        prior: ``mix``: the prompt's weight in support clips.

    Returns:
        ``{k: {"mean", "std", "zero_shot_mean", "queries"}}`` or ``{k: None}`` when a class has <= k clips.
    """
    if head not in ("mix", "linear"):
        raise ValueError(f"eval.few_shot_head must be 'mix' or 'linear', got {head!r}")
    features, labels = features.float().cpu(), labels.long().cpu()
    class_embeddings = class_embeddings.float().cpu()
    counts = torch.bincount(labels, minlength=class_embeddings.shape[0])
    out: dict[int, dict[str, float] | None] = {}
    for k in ks:  # a handful of k values; each k trains all its episodes in one batched problem
        if int(counts.min()) <= k:
            out[int(k)] = None
            continue
        support = sample_support(labels, k, seeds, base_seed)  # [S, N]
        if head == "mix":
            weight, bias = mix_heads(features, labels, support, class_embeddings, prior)
        else:
            weight, bias = train_heads(features, labels, support, class_embeddings, logit_scale, steps, lr)
        out[int(k)] = _score_queries(features, labels, support, weight, bias, class_embeddings, logit_scale)
    return out


def _score_queries(features, labels, support, weight, bias, class_embeddings, logit_scale) -> dict[str, float]:
    query = ~support  # [S, N]
    logits = logit_scale * torch.einsum("nd,scd->snc", features, weight) + bias[:, None, :]  # [S, N, C]
    # a query with a NaN/inf score is wrong (argmax picks a NaN as the largest, which could be the true class)
    correct = ((logits.argmax(dim=2) == labels[None]) & torch.isfinite(logits).all(dim=2)).float()  # [S, N]
    acc = (correct * query).sum(dim=1) / query.sum(dim=1)  # [S]
    zs_logits = features @ class_embeddings.T  # [N, C]
    zs_correct = ((zs_logits.argmax(dim=1) == labels) & torch.isfinite(zs_logits).all(dim=1)).float()  # [N]
    zs = (zs_correct[None] * query).sum(dim=1) / query.sum(dim=1)  # [S]
    return {"mean": acc.mean().item(), "std": acc.std().item() if acc.numel() > 1 else 0.0,
            "zero_shot_mean": zs.mean().item(), "queries": float(query.sum(dim=1).float().mean())}
