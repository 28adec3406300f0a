"""Evaluation maths on hand-made score matrices, checked against values worked out by hand or by slow loops."""

import pytest
import torch

from spklip.eval.fewshot import few_shot_eval, sample_support
from spklip.eval.metrics import (confusion_matrix, ranks_of_positives, retrieval_metrics, text_video_retrieval,
                                 topk_accuracy)


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0],   # true 0: rank 1
                           [0.5, 0.2, 0.3],   # true 1: rank 3
                           [0.1, 0.8, 0.4]])  # true 2: rank 2
    acc = topk_accuracy(logits, torch.tensor([0, 1, 2]), ks=(1, 2, 3, 5))
    assert acc == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0, 5: 1.0})


def test_topk_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 0, 2, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_retrieval_ranks_diagonal_by_hand():
    scores = torch.tensor([[5.0, 1.0, 0.0, 2.0],   # rank 1
                           [3.0, 2.0, 1.0, 0.0],   # rank 2
                           [3.0, 4.0, 1.0, 2.0],   # rank 4
                           [0.0, 1.0, 2.0, 3.0]])  # rank 1
    assert ranks_of_positives(scores).tolist() == [1, 2, 4, 1]
    m = retrieval_metrics(scores, ks=(1, 2, 10))
    assert m["R1"] == pytest.approx(0.5) and m["R2"] == pytest.approx(0.75) and m["R10"] == 1.0
    assert m["median_rank"] == pytest.approx(1.5) and m["mean_rank"] == pytest.approx(2.0)


def test_retrieval_with_several_positives_uses_the_best_one():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, 1.0, 2.0]])
    pos = torch.tensor([[True, False, True], [True, False, False]])
    assert ranks_of_positives(scores, pos).tolist() == [2, 3]
    with pytest.raises(ValueError, match="positive"):
        ranks_of_positives(scores, torch.zeros(2, 3, dtype=torch.bool))


def test_text_video_retrieval_matches_a_slow_loop():
    gen = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen), dim=1)
    text = torch.nn.functional.normalize(torch.randn(12, 8, generator=gen), dim=1)
    captions = [f"c{i % 5}" for i in range(12)]
    text = text[[i % 5 for i in range(12)]]  # identical captions -> identical text embeddings
    got = text_video_retrieval(video, text, captions, ks=(1, 5))
    sim = text @ video.T
    for name, s in (("t2v", sim), ("v2t", sim.T)):
        ranks = []
        for q in range(12):  # slow reference: walk the sorted candidate list until a matching caption
            order = sorted(range(12), key=lambda j: -s[q, j].item())
            ranks.append(next(i for i, j in enumerate(order, 1) if captions[j] == captions[q]))
        ranks = torch.tensor(ranks, dtype=torch.float)
        assert got[f"{name}_clip/R1"] == pytest.approx((ranks <= 1).float().mean().item())
        assert got[f"{name}_clip/R5"] == pytest.approx((ranks <= 5).float().mean().item())
        assert got[f"{name}_clip/mean_rank"] == pytest.approx(ranks.mean().item())


def test_support_sampling_takes_k_per_class_and_varies_by_episode():
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 6)[torch.randperm(18, generator=torch.Generator().manual_seed(1))]
    mask = sample_support(labels, k=2, seeds=4)
    for s in range(4):
        assert torch.bincount(labels[mask[s]], minlength=3).tolist() == [2, 2, 2]
    assert not all(torch.equal(mask[0], mask[s]) for s in range(1, 4))
    assert torch.equal(mask, sample_support(labels, k=2, seeds=4))  # reproducible


def _clustered(num_classes=4, per_class=20, dim=16, noise=0.25, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = torch.nn.functional.normalize(centres[labels] + noise * torch.randn(len(labels), dim, generator=gen), dim=1)
    return feats, labels, centres


def test_few_shot_head_learns_beyond_misleading_prompts():
    feats, labels, centres = _clustered()
    prompts = centres[[1, 2, 3, 0]]  # prompts point at the wrong class: zero-shot is near 0
    res = few_shot_eval(feats, labels, prompts, ks=(1, 8, 20), seeds=3, steps=150, lr=0.05, logit_scale=10.0,
                        head="linear")
    assert res[20] is None  # no query clip left
    assert res[1]["zero_shot_mean"] < 0.2
    assert res[8]["mean"] > 0.8 and res[8]["mean"] > res[1]["mean"] - 0.05
    assert 0 <= res[8]["std"] < 0.2


def test_few_shot_with_zero_steps_is_the_zero_shot_classifier():
    feats, labels, centres = _clustered(seed=3)
    res = few_shot_eval(feats, labels, centres, ks=(2,), seeds=2, steps=0, head="linear")
    assert res[2]["mean"] == pytest.approx(res[2]["zero_shot_mean"])


def test_prototype_mixing_is_never_below_zero_shot_and_improves_with_k():
    feats, labels, centres = _clustered(num_classes=6, per_class=40, dim=16, noise=0.35, seed=1)
    gen = torch.Generator().manual_seed(5)
    prompts = torch.nn.functional.normalize(centres + 0.5 * torch.randn(centres.shape, generator=gen), dim=1)
    res = few_shot_eval(feats, labels, prompts, ks=(1, 2, 4, 8, 16), seeds=5)  # default head: mix
    zero = res[4]["zero_shot_mean"]
    assert 0.3 < zero < 0.9  # the prompts are informative but imperfect
    for k in (4, 8, 16):
        assert res[k]["mean"] >= res[k]["zero_shot_mean"]
    means = [res[k]["mean"] for k in (1, 2, 4, 8, 16)]
    assert means == sorted(means) and means[-1] > 0.8  # the noise-limited optimum (true centres) is ~0.9


def test_prototype_mixing_with_no_support_weight_left_is_zero_shot():
    feats, labels, centres = _clustered(seed=2)
    res = few_shot_eval(feats, labels, centres, ks=(1,), seeds=2, prior=1e6)
    assert res[1]["mean"] == pytest.approx(res[1]["zero_shot_mean"])
    with pytest.raises(ValueError, match="few_shot_head"):
        few_shot_eval(feats, labels, centres, ks=(1,), head="knn")
