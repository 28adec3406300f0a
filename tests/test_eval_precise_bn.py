"""Precise BatchNorm (spklip/eval/precise_bn.py) on the real spklip-tiny model, and the random training sample it
is fed (spklip.data.read.sample_batches)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spklip.config import load_config
from spklip.data.read import sample_batches
from spklip.eval.precise_bn import batchnorm_layers, recalibrate_batchnorm
from spklip.model import create_model
from test_train_fixtures import write_motion_shards

SHAPE = ["model.num_planes=32", "model.height=64", "model.width=64"]


def _model(*extra):
    torch.manual_seed(0)
    return create_model(load_config(overrides=["model_preset=spklip-tiny", *SHAPE, *extra]).model)


def _clips(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 32, 64, 64, generator=g) < 0.05).to(torch.uint8)  # [n, N, H, W] sparse spikes


def _mean_pairwise_cos(f):
    f = F.normalize(f, dim=-1)
    return float((f @ f.T).mean())


def test_one_batch_makes_eval_mode_equal_train_mode_statistics():
    """Recalibrated on one batch, every BatchNorm holds that batch's statistics: eval-mode embeddings of the batch
    equal the ones computed with batch statistics (BatchNorm in train mode, dropout off)."""
    model = _model()
    clips = _clips(8)
    model.eval()
    for bn in batchnorm_layers(model):
        bn.train()
    with torch.no_grad():
        with_batch_stats = model.encode_spikes(clips)
    model.eval()
    with torch.no_grad():
        before = model.encode_spikes(clips)
    assert recalibrate_batchnorm(model, [{"spikes": clips}], torch.device("cpu")) == 1
    with torch.no_grad():
        after = model.encode_spikes(clips)
    # Not bit-equal: running_var stores the unbiased variance, n/(n-1) off the batch's (n = 96 values per channel
    # in the last stage).
    assert F.cosine_similarity(after, with_batch_stats).min() > 0.999
    assert F.cosine_similarity(before, with_batch_stats).max() < 0.9  # the fresh running statistics were far off


def test_fresh_model_embeddings_collapse_in_eval_mode_until_recalibrated():
    """The failure it fixes: freshly initialised, eval-mode BatchNorm maps every clip to nearly the same embedding."""
    model = _model()
    clips = _clips(16, seed=1)
    model.eval()
    with torch.no_grad():
        assert _mean_pairwise_cos(model.encode_spikes(clips)) > 0.99
    recalibrate_batchnorm(model, [{"spikes": _clips(8, seed=s)} for s in (2, 3)], torch.device("cpu"))
    with torch.no_grad():
        assert _mean_pairwise_cos(model.encode_spikes(clips)) < 0.9


def test_statistics_are_the_plain_average_over_batches_and_nothing_else_changes():
    model = _model()
    model.train()
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    stem_bn = model.visual.backbone.stem[0][1]  # first BatchNorm of the backbone
    seen = []
    hook = stem_bn.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().mean(dim=(0, 2, 3))))
    batches = [{"spikes": _clips(4, seed=s)} for s in range(3)]
    rng_before = torch.get_rng_state()
    assert recalibrate_batchnorm(model, batches, torch.device("cpu")) == 3
    hook.remove()
    assert torch.allclose(stem_bn.running_mean, torch.stack(seen).mean(0), atol=1e-6)
    assert stem_bn.momentum == 0.1 and model.training  # settings and mode restored
    assert torch.equal(torch.get_rng_state(), rng_before)
    for k, v in model.state_dict().items():
        if k in params:
            assert torch.equal(v, params[k]), k  # weights untouched


def test_an_error_midway_restores_the_old_statistics():
    model = _model()
    recalibrate_batchnorm(model, [{"spikes": _clips(4)}], torch.device("cpu"))
    saved = [bn.running_mean.clone() for bn in batchnorm_layers(model)]

    def batches():
        yield {"spikes": _clips(4, seed=5)}
        yield {"spikes": torch.zeros(4, 7, 64, 64, dtype=torch.uint8)}  # wrong plane count

    with pytest.raises(ValueError, match="spikes must be"):
        recalibrate_batchnorm(model, batches(), torch.device("cpu"))
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(batchnorm_layers(model), saved))
    assert recalibrate_batchnorm(model, [], torch.device("cpu")) == 0
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(batchnorm_layers(model), saved))


@pytest.mark.parametrize("extra", ["model.fsve.variant=snn-backbone", "model.fsve.variant=full-snn",
                                   "model.arch=tfp-resnet"])
def test_fsve_and_baselines_recalibrate_every_batchnorm(extra):
    model = _model(extra)
    bns = batchnorm_layers(model)
    before = [bn.running_mean.clone() for bn in bns]
    assert recalibrate_batchnorm(model, [{"spikes": _clips(4)}], torch.device("cpu")) == 1
    assert bns and all(not torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))


def test_a_model_without_batchnorm_is_left_alone():
    model = _model("model.arch=spike-rate-mlp")
    assert batchnorm_layers(model) == []
    assert recalibrate_batchnorm(model, [{"spikes": _clips(4)}], torch.device("cpu")) == 0


def test_sample_batches_draws_without_replacement_from_the_whole_split(tmp_path):
    data = write_motion_shards(tmp_path / "motion", per_class=12, val_per_class=4)  # 4 seen classes x 8 train
    batches = list(sample_batches(str(data), "train", num_batches=3, batch_size=8, seed=0))
    assert [len(b["caption"]) for b in batches] == [8, 8, 8]
    labels = torch.cat([b["label"] for b in batches])
    assert len(set(labels.tolist())) == 4  # every class: not the first rows of a class-ordered file
    assert len({len(set(b["label"].tolist())) > 1 for b in batches}) == 1  # batches mix classes
    again = list(sample_batches(str(data), "train", num_batches=3, batch_size=8, seed=0))
    assert all(torch.equal(a["spikes"], b["spikes"]) for a, b in zip(batches, again))  # seeded
    full = list(sample_batches(str(data), "train", num_batches=100, batch_size=8, seed=1))
    assert len(full) == 4  # 32 clips: as many full batches as the split holds
    spikes = torch.cat([b["spikes"] for b in full]).flatten(1)
    assert len(np.unique(spikes.numpy(), axis=0)) == 32  # without replacement
