"""The per-factor zero-shot breakdown (issue 24): which parts of an unseen composition the model got right."""

import math

import pandas as pd
import pytest
import torch

from spklip.config import EvalCfg
from spklip.data.phases import class_factors
from spklip.eval.evaluate import Embedded, evaluate_embeddings
from spklip.eval.metrics import factor_accuracy
from spklip.runtime.tune.report import expand_metrics


def test_factor_accuracy_counts_clips_whose_prediction_shares_the_factor():
    # classes: 0 = (3, left-up), 1 = (3, up-left), 2 = (5, left-up); row = true class, column = predicted
    factors = [{"digit": "3", "phase1": "left", "phase2": "up"}, {"digit": "3", "phase1": "up", "phase2": "left"},
               {"digit": "5", "phase1": "left", "phase2": "up"}]
    cm = torch.tensor([[2, 2, 0],   # class 0: 2 right, 2 took its reverse (digit right, both phases wrong)
                       [0, 4, 0],   # class 1: all right
                       [4, 0, 0]])  # class 2: all took class 0 (phases right, digit wrong)
    got = factor_accuracy(cm, factors)
    assert got["digit"] == (pytest.approx(8 / 12), pytest.approx(5 / 9))  # class 2's 4 clips lose the digit
    # the first phase: wrong only for class 0's 2 clips that took its reverse (left -> up); class 2's keep "left"
    assert got["phase1"] == (pytest.approx(10 / 12), pytest.approx(5 / 9))
    assert got["phase2"] == (pytest.approx(10 / 12), pytest.approx(5 / 9))


def test_factor_chance_is_the_share_of_candidates_with_the_same_value():
    factors = [{"digit": "3", "motion": "left"}, {"digit": "3", "motion": "right"},
               {"digit": "5", "motion": "left"}, {"digit": "5", "motion": "right"}]
    cm = torch.eye(4, dtype=torch.long) * 5  # all right
    got = factor_accuracy(cm, factors)
    assert got == {"digit": (1.0, 0.5), "motion": (1.0, 0.5)}
    wrong_motion = torch.tensor([[0, 5, 0, 0], [5, 0, 0, 0], [0, 0, 0, 5], [0, 0, 5, 0]])
    got = factor_accuracy(wrong_motion, factors)
    assert got["digit"][0] == 1.0 and got["motion"][0] == 0.0


def test_a_factor_with_one_value_among_the_candidates_is_left_out():
    factors = [{"digit": "0", "motion": "left"}, {"digit": "0", "motion": "right"}]
    got = factor_accuracy(torch.tensor([[3, 1], [0, 4]]), factors)
    assert set(got) == {"motion"} and got["motion"] == (pytest.approx(7 / 8), pytest.approx(0.5))


def test_class_factors_follow_the_builders_digit_major_order():
    meta = {"kind": "moving-digits", "builder": {"digits": [3, 5], "motions": ["left-up", "down-right"]}}
    assert class_factors(meta) == [{"digit": "3", "phase1": "left", "phase2": "up"},
                                   {"digit": "3", "phase1": "down", "phase2": "right"},
                                   {"digit": "5", "phase1": "left", "phase2": "up"},
                                   {"digit": "5", "phase1": "down", "phase2": "right"}]
    one = {"kind": "moving-digits", "builder": {"digits": [1], "motions": ["left", "rotate"]}}
    assert class_factors(one) == [{"digit": "1", "motion": "left"}, {"digit": "1", "motion": "rotate"}]
    assert class_factors({"kind": "video-folder", "builder": {}}) is None


class _PromptModel(torch.nn.Module):
    def __init__(self, names):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.table = {n: torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=0) for n in names}
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def class_embeddings(self, names):
        return torch.stack([self.table[n] for n in names])


def test_zero_shot_reports_each_factor_with_its_chance_and_a_table():
    names = [f"class {i}" for i in range(6)]
    factors = [{"digit": str(d), "motion": m} for d in (0, 1, 2) for m in ("left", "right")]
    model = _PromptModel(names)
    unseen_ids = [2, 3, 4, 5]
    # every unseen clip looks like the class with the same digit and the other motion: digit right, motion wrong
    swap = {2: 3, 3: 2, 4: 5, 5: 4}
    labels = torch.tensor(unseen_ids).repeat_interleave(3)
    feats = torch.stack([model.table[names[swap[i]]] for i in labels.tolist()])
    unseen = Embedded(feats, feats.clone(), labels, [names[i] for i in labels.tolist()])
    seen_labels = torch.tensor([0, 1]).repeat_interleave(3)
    seen_feats = torch.stack([model.table[names[i]] for i in seen_labels.tolist()])
    seen = Embedded(seen_feats, seen_feats.clone(), seen_labels, [names[i] for i in seen_labels.tolist()])
    rep = evaluate_embeddings(model, seen, names, [0, 1], EvalCfg(few_shot_ks=(1,), few_shot_seeds=1),
                              unseen=unseen, unseen_ids=unseen_ids, prefix="test", class_factors=factors)
    m = rep.metrics
    assert m["test/zeroshot/top1"] == 0.0
    assert m["test/zeroshot/factor/digit"] == 1.0 and m["chance/test/zeroshot/factor/digit"] == 0.5
    assert m["test/zeroshot/factor/motion"] == 0.0 and m["chance/test/zeroshot/factor/motion"] == 0.5
    assert "| digit | 1.0000 | 0.5000 |" in rep.tables["zeroshot_factors.md"]
    without = evaluate_embeddings(model, seen, names, [0, 1], EvalCfg(few_shot_ks=(1,), few_shot_seeds=1),
                                  unseen=unseen, unseen_ids=unseen_ids, prefix="test")
    assert not any("/factor/" in k for k in without.metrics)


def test_a_wildcard_report_metric_stands_for_what_the_runs_logged():
    frame = pd.DataFrame(columns=["metrics.test/top1", "metrics.test/zeroshot/factor/phase2",
                                  "metrics.test/zeroshot/factor/digit", "metrics.chance/test/zeroshot/factor/digit"])
    got = expand_metrics([("val/top1", "max"), ("test/zeroshot/factor/*", "max"), ("test/top1", "max")], frame)
    assert got == [("val/top1", "max"), ("test/zeroshot/factor/digit", "max"),
                   ("test/zeroshot/factor/phase2", "max"), ("test/top1", "max")]
    assert expand_metrics([("x/*", "max")], frame) == []
