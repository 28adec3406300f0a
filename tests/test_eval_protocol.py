"""The evaluation protocol says what its numbers mean: class-level retrieval against slow references, chance levels,
zero-/few-shot left out when one unseen class makes them 1.0, and statistics that admit seeds without variation."""

import math

import pytest
import torch

from spklip.config import EvalCfg
from spklip.eval.evaluate import Embedded, evaluate_embeddings
from spklip.eval.metrics import average_precision, class_retrieval, class_retrieval_chance, topk_chance
from spklip.eval.stats import difference, summarize, wilson
from spklip.train.final_eval import relabel
from spklip.runtime.tune.report import clips_key


def _features(n=15, classes=4, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    video = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    proto = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    return video, proto[labels], [f"caption {int(c)}" for c in labels], labels


def _slow_ap(scores: list[float], positive: list[bool]) -> float:
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], positive[j]))  # ties: negatives first
    hits, total = 0, 0.0
    for rank, j in enumerate(order, 1):
        if positive[j]:
            hits += 1
            total += hits / rank
    return total / sum(positive)


def test_class_retrieval_matches_slow_references():
    video, text, captions, labels = _features()
    got = class_retrieval(video, text, captions, ks=(1, 2))
    distinct = sorted(set(captions), key=captions.index)  # each caption once, in first-seen order
    t_feats = torch.stack([text[captions.index(c)] for c in distinct])
    sim = t_feats @ video.T  # [C, N]
    t2v_ranks, aps = [], []
    for c, cap in enumerate(distinct):  # a caption's best clip, and the AP of all its clips
        scores = sim[c].tolist()
        pos = [captions[j] == cap for j in range(len(captions))]
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
        t2v_ranks.append(next(i for i, j in enumerate(order, 1) if pos[j]))
        aps.append(_slow_ap(scores, pos))
    v2t_ranks = []
    for j in range(len(captions)):  # a clip against the distinct captions
        order = sorted(range(len(distinct)), key=lambda c: -sim[c, j].item())
        v2t_ranks.append(next(i for i, c in enumerate(order, 1) if distinct[c] == captions[j]))
    assert got["t2v_class/R1"] == pytest.approx(sum(r <= 1 for r in t2v_ranks) / len(distinct))
    assert got["t2v_class/R2"] == pytest.approx(sum(r <= 2 for r in t2v_ranks) / len(distinct))
    assert got["t2v_class/mAP"] == pytest.approx(sum(aps) / len(aps), abs=1e-6)
    assert got["v2t_class/R1"] == pytest.approx(sum(r <= 1 for r in v2t_ranks) / len(captions))
    assert got["v2t_class/mean_rank"] == pytest.approx(sum(v2t_ranks) / len(captions))


def test_class_retrieval_does_not_move_with_clips_per_class():
    video, text, captions, _ = _features(n=8, classes=4)
    twice = class_retrieval(torch.cat([video, video]), torch.cat([text, text]), captions * 2, ks=(1,))
    once = class_retrieval(video, text, captions, ks=(1,))
    assert twice["t2v_class/R1"] == once["t2v_class/R1"] and twice["v2t_class/R1"] == once["v2t_class/R1"]


def test_average_precision_of_a_constant_or_broken_scorer_is_not_perfect():
    pos = torch.tensor([[True, False, False, False]])
    assert average_precision(torch.zeros(1, 4), pos).item() == pytest.approx(0.25)  # ties count against it
    nan = torch.tensor([[float("nan"), 0.1, 0.2, 0.3]])
    assert average_precision(nan, pos).item() == pytest.approx(0.25)  # a NaN positive ranks last
    assert average_precision(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), pos).item() == 1.0


def test_chance_levels_match_a_random_scorer():
    assert topk_chance(12, (1, 5)) == {1: pytest.approx(1 / 12), 5: pytest.approx(5 / 12)}
    captions = [f"c{i % 3}" for i in range(9)]
    chance = class_retrieval_chance(captions, ks=(1, 2))
    assert chance["v2t_class/R1"] == pytest.approx(1 / 3) and chance["v2t_class/R2"] == pytest.approx(2 / 3)
    assert chance["t2v_class/R1"] == pytest.approx(1 / 3)
    assert chance["t2v_class/R2"] == pytest.approx(1 - math.comb(6, 2) / math.comb(9, 2))
    gen = torch.Generator().manual_seed(0)  # the same figure from many random scorers
    hits = []
    for _ in range(400):
        video = torch.randn(9, 4, generator=gen)
        text = torch.randn(3, 4, generator=gen)[[i % 3 for i in range(9)]]
        hits.append(class_retrieval(video, text, captions, ks=(2,))["t2v_class/R2"])
    assert sum(hits) / len(hits) == pytest.approx(chance["t2v_class/R2"], abs=0.05)


class _PromptModel(torch.nn.Module):
    """What `evaluate_embeddings` calls: prompt embeddings for class names (one fixed vector per name)."""

    def __init__(self, names, dim=8):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.table = {n: torch.nn.functional.normalize(torch.randn(dim, generator=gen), dim=0) for n in names}
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def class_embeddings(self, names):
        return torch.stack([self.table[n] for n in names])


def _split(model, names, ids, per_class=6, noise=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(ids).repeat_interleave(per_class)
    feats = torch.stack([model.table[names[i]] for i in labels.tolist()])
    feats = torch.nn.functional.normalize(feats + noise * torch.randn(feats.shape, generator=gen), dim=1)
    return Embedded(feats, feats.clone(), labels, [names[i] for i in labels.tolist()])


def test_zero_and_few_shot_are_left_out_over_one_unseen_class_not_reported_as_one():
    names = [f"class {i}" for i in range(5)]
    model = _PromptModel(names)
    cfg = EvalCfg(few_shot_ks=(1,), few_shot_seeds=2)
    seen = _split(model, names, [0, 1, 2, 3])
    one = evaluate_embeddings(model, seen, names, [0, 1, 2, 3], cfg, unseen=_split(model, names, [4]),
                              unseen_ids=[4])
    assert not any(k.startswith(("zeroshot/", "fewshot/")) for k in one.metrics)
    assert any("1 unseen class" in n for n in one.notes)
    two = evaluate_embeddings(model, _split(model, names, [0, 1, 2]), names, [0, 1, 2], cfg,
                              unseen=_split(model, names, [3, 4]), unseen_ids=[3, 4], prefix="test")
    assert two.metrics["test/zeroshot/top1"] == 1.0 and two.metrics["chance/test/zeroshot/top1"] == 0.5
    assert two.metrics["clips/test/zeroshot"] == 12 and "test/fewshot/1shot_top1" in two.metrics
    assert two.metrics["chance/test/top1"] == pytest.approx(1 / 3) and two.metrics["clips/test"] == 18
    assert "test/top5" not in two.metrics  # top-5 over 3 classes is always right: left out
    assert "chance/test/t2v_class/R1" in two.metrics and "test/t2v_clip/R1" in two.metrics


def test_val_keeps_the_training_names_of_zero_shot():
    names = [f"class {i}" for i in range(5)]
    model = _PromptModel(names)
    rep = evaluate_embeddings(model, _split(model, names, [0, 1, 2]), names, [0, 1, 2], EvalCfg(few_shot_ks=(1,)),
                              unseen=_split(model, names, [3, 4]), unseen_ids=[3, 4])
    assert "zeroshot/top1" in rep.metrics and "val/top1" in rep.metrics and "chance/zeroshot/top1" in rep.metrics


def test_relabel_moves_every_key_of_a_prefix():
    got = relabel({"test/top1": 0.9, "chance/test/top1": 0.1, "clips/test": 72.0, "clips/test/zeroshot": 120.0,
                   "test/zeroshot/top1": 0.5, "val/top1": 0.8}, "test", "test_final")
    assert got == {"test_final/top1": 0.9, "chance/test_final/top1": 0.1, "clips/test_final": 72.0,
                   "clips/test_final/zeroshot": 120.0, "test_final/zeroshot/top1": 0.5, "val/top1": 0.8}


def test_clips_key_names_the_split_behind_a_metric():
    assert clips_key("test/top1") == "clips/test" and clips_key("val/top5") == "clips/val"
    assert clips_key("test/fewshot/4shot_top1") == "clips/test/zeroshot" and clips_key("zeroshot/top1") == \
        "clips/zeroshot"


def test_seeds_without_variation_give_no_p_value():
    same = difference([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    assert same.no_variation and not same.beyond_noise and math.isnan(same.p_value)
    assert "no variation across 3 + 3 seeds" in str(same) and "p =" not in str(same)
    assert "no variation across 3 seeds" in str(summarize([0.9, 0.9, 0.9]))
    varied = difference([0.95, 0.93, 0.97], [0.50, 0.52, 0.48])
    assert varied.beyond_noise and not varied.no_variation and varied.p_value < 0.01
    # a deterministic energy summed in another order differs in its last bits: round-off, not variation (the demo
    # printed "+0.122 ± 0.000 (p = 1.6e-33: beyond noise)" for HSFE - K=1 energy)
    energy = 0.06105573017895222
    rounded = difference([0.1832] * 3, [energy, energy + 2e-17, energy - 1.4e-17])
    assert rounded.no_variation and math.isnan(rounded.p_value)
    assert summarize([energy, energy + 2e-17, energy]).constant
    tiny = difference([0.1832] * 3, [0.07799, 0.07800, 0.07801])  # a real, small spread is kept
    assert tiny.beyond_noise and not tiny.no_variation


def test_wilson_interval():
    low, high = wilson(0.5, 100)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)
    low, high = wilson(1.0, 20)  # a perfect score on few clips still has room below
    assert high == pytest.approx(1.0) and low == pytest.approx(0.839, abs=1e-3)
    assert all(math.isnan(v) for v in wilson(0.5, 0))


def test_final_evaluation_scores_the_best_and_the_last_checkpoint_on_test(tmp_path):
    from spklip.config import load_config
    from spklip.data.read import dataset_info
    from spklip.model import create_model
    from spklip.train.checkpoint import TrainState, save_checkpoint
    from spklip.train.final_eval import evaluate_on_test
    from test_train_fixtures import write_motion_shards

    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2, test_per_class=3,
                               shape=(16, 32, 32))
    cfg = load_config("configs/tiny.yaml", [f"data.path={data}", "model.num_planes=16", "model.height=32",
                                            "model.width=32", "model.hsfe.stride=1", "eval.few_shot_ks=[1]",
                                            "eval.few_shot_seeds=1", "eval.energy=true"])
    torch.manual_seed(0)
    first = save_checkpoint(tmp_path / "a", model=create_model(cfg.model, loss_cfg=cfg.loss), cfg=cfg,
                            state=TrainState(step=1))
    torch.manual_seed(1)  # other weights: other scores
    second = save_checkpoint(tmp_path / "b", model=create_model(cfg.model, loss_cfg=cfg.loss), cfg=cfg,
                             state=TrainState(step=2))
    dataset = dataset_info(cfg)
    report = evaluate_on_test(cfg, dataset, str(first), str(second), torch.device("cpu"))
    m = report.metrics
    assert m["clips/test"] == 12 and m["clips/test_final"] == 12 and m["chance/test/top1"] == 0.25
    assert m["clips/test/zeroshot"] == 16 and m["chance/test_final/zeroshot/top1"] == 0.5
    assert m["test/t2v_class/mAP"] != m["test_final/t2v_class/mAP"]  # two models, scored apart
    assert not any(k.startswith("energy/") for k in m)  # energy is the same on every split: not recomputed
    assert report.checkpoints == {"test": str(first), "test_final": str(second)}
    same = evaluate_on_test(cfg, dataset, str(first), str(first), torch.device("cpu"))
    assert same.metrics["test/top1"] == same.metrics["test_final/top1"] == m["test/top1"]
    empty = evaluate_on_test(dataclasses_replace_test_split(cfg, "nope"), dataset, str(first), None)
    assert not empty.metrics and "no clips in split 'nope'" in empty.notes[0]


def dataclasses_replace_test_split(cfg, split):
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_split=split))
