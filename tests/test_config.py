"""The typed config: YAML + dotted overrides, clear errors naming the key, flat-dict round trip, derived values."""

import dataclasses
import re
import subprocess
import sys

import pytest

from spklip.config import ConfigError, ExperimentConfig, HsfeCfg, ModelCfg, apply_overrides, from_dict, load_config
from spklip.config import parse_overrides
from spklip.config.registry import get_model_config, list_models


def load_preset(name: str) -> ModelCfg:
    """A preset's dict typed on its own (what ``model_preset`` starts the model section from)."""
    return from_dict(ModelCfg, get_model_config(name), prefix="model.")


def test_defaults_start_from_the_named_preset():
    cfg = load_config()
    assert cfg.model_preset == "spklip-tiny"
    assert cfg.model == load_preset("spklip-tiny")
    assert "spklip-tiny" in list_models()


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 3\n  seed: 7\nmodel:\n  hsfe:\n    radius: 4\n")
    cfg = load_config(path, ["train.epochs=5", "model.hsfe.spatial_attention=false", "optim.lr=1e-3",
                             "model.backbone.layers=[2,2]"])
    assert cfg.train.epochs == 5  # override beats YAML
    assert cfg.train.seed == 7  # YAML beats default
    assert cfg.model.hsfe.radius == 4  # YAML beats preset
    assert cfg.model.hsfe.spatial_attention is False
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.backbone.layers == (2, 2)
    assert cfg.model.hsfe.features == load_preset("spklip-tiny").hsfe.features  # preset beats default


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),
    ("model.hsfe.radiuss=3", "model.hsfe.radiuss"),
    ("nosuchsection.x=1", "nosuchsection"),
])
def test_unknown_keys_are_an_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("model.hsfe.spatial_attention=1", "model.hsfe.spatial_attention"),
    ("model.text.kind=gpt", "model.text.kind"),
    ("model.hsfe.num_subblocks=many", "model.hsfe.num_subblocks"),
])
def test_wrong_types_are_an_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_union_and_literal_fields_accept_their_forms():
    cfg = load_config(overrides=["model.hsfe.num_subblocks=auto", "model.hsfe.step=7"])
    assert cfg.model.hsfe.num_subblocks == "auto" and cfg.model.hsfe.step == 7


def test_flat_dict_round_trip_is_exact():
    cfg = load_config(overrides=["model.hsfe.radius=3", "model.text.templates=[a {}, the {}]"])
    flat = cfg.to_flat_dict()
    assert flat["model.hsfe.radius"] == 3
    assert all(not isinstance(v, dict) for v in flat.values())
    assert ExperimentConfig.from_flat_dict(flat) == cfg


def test_derived_window_is_computed_not_stored():
    h = HsfeCfg(radius=30)
    assert h.window == 61
    assert "window" not in {f.name for f in dataclasses.fields(HsfeCfg)}
    assert h.window == 2 * dataclasses.replace(h, radius=30).radius + 1


def test_invalid_branch_layout_is_rejected():
    with pytest.raises(ConfigError, match="model.hsfe"):
        load_config(overrides=["model.hsfe.radius=1", "model.hsfe.num_branches=4"])


def test_apply_overrides_returns_a_new_frozen_config():
    base = load_config()
    new = apply_overrides(base, {"train.epochs": 2})
    assert new.train.epochs == 2 and base.train.epochs == ExperimentConfig().train.epochs
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.train.epochs = 3  # type: ignore[misc]


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown model preset"):
        load_config(overrides=["model_preset=spklip-huge"])


def test_model_section_alone_builds():
    assert isinstance(load_preset("spklip-tiny"), ModelCfg)


def test_config_and_the_preset_registry_import_no_torch():
    code = ("import sys, spklip.config, spklip.config.registry; spklip.config.load_config(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_yes_no_switches_parse_as_booleans_from_the_command_line():
    from spklip.config import load_config
    from spklip.runtime.plan import _use_gpu

    for text, want in (("yes", True), ("no", False), ("true", True), ("false", False)):
        cfg = load_config(None, [f"scale.use_gpu={text}", f"data.materialize={text}"])
        assert cfg.scale.use_gpu is want and cfg.data.materialize is want and _use_gpu(cfg) is want
    with pytest.raises(ConfigError, match="scale.use_gpu"):
        load_config(None, ["scale.use_gpu=maybe"])


def test_local_mode_refuses_a_cluster_address_and_picks_its_device_without_ray(monkeypatch):
    """scale.address with num_workers=0 would leave the cluster unused: a one-line error naming both settings; the
    local-mode device follows scale.use_gpu and torch, not Ray's resources."""
    import torch

    from spklip.runtime.worker import local_device

    with pytest.raises(ConfigError, match=r"scale.address=10.0.0.5:6379 names a Ray cluster, but scale.num_workers=0"):
        load_config(None, ["scale.num_workers=0", "scale.address=10.0.0.5:6379"])
    assert load_config(None, ["scale.num_workers=1", "scale.address=10.0.0.5:6379"]).scale.address == "10.0.0.5:6379"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device(load_config(None, ["scale.num_workers=0"])) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert local_device(load_config(None, ["scale.num_workers=0"])) == torch.device("cuda", 0)
    assert local_device(load_config(None, ["scale.num_workers=0", "scale.use_gpu=false"])) == torch.device("cpu")


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"),
    ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
    ("optim.lr=.nan", "optim.lr must be > 0, got nan"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0, got -0.1"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1] must be in [0, 1), got 1.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0, got -1"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio must be in [0, 1], got 1.5"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0, got -1.0"),
    ("optim.accum_steps=0", "optim.accum_steps must be >= 1, got 0"),
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.max_steps=-1", "train.max_steps must be >= 0, got -1"),
    ("train.seed=-3", "train.seed must be >= 0, got -3"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be >= 0, got -1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1, got 0"),
    ("train.metric=''", "train.metric must not be empty"),
    ("scale.num_workers=-1", "scale.num_workers must be >= 0, got -1"),
    ("scale.cpus_per_worker=0", "scale.cpus_per_worker must be > 0, got 0.0"),
    ("scale.max_failures=-2", "scale.max_failures must be >= -1, got -2"),
    ("eval.few_shot_ks=[1, 0]", "eval.few_shot_ks[1] must be >= 1, got 0"),
    ("eval.retrieval_ks=[0]", "eval.retrieval_ks[0] must be >= 1, got 0"),
    ("eval.few_shot_seeds=0", "eval.few_shot_seeds must be >= 1, got 0"),
    ("eval.every_epochs=-1", "eval.every_epochs must be >= 0, got -1"),
    ("eval.every_steps=-1", "eval.every_steps must be >= 0, got -1"),
    ("scale.threads_per_worker=-1", "scale.threads_per_worker must be >= 0, got -1"),
    ("eval.few_shot_lr=-1", "eval.few_shot_lr must be > 0, got -1.0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ("tracking.experiment=''", "tracking.experiment must not be empty"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.seed=-1", "data.seed must be >= 0, got -1"),
    ("data.materialize_max_mb=-1", "data.materialize_max_mb must be >= 0, got -1"),
    ("augment.hflip=1.5", "augment.hflip must be in [0, 1], got 1.5"),
    ("augment.spike_dropout=1", "augment.spike_dropout must be in [0, 1), got 1.0"),
    ("augment.shift_px=-1", "augment.shift_px must be >= 0, got -1"),
    ("model.hsfe.radius=-1", "model.hsfe.radius must be >= 0, got -1"),
    ("model.hsfe.num_branches=0", "model.hsfe.num_branches must be >= 1, got 0"),
    ("model.hsfe.channel_step=0", "model.hsfe.channel_step must be >= 1, got 0"),
    ("model.hsfe.branch_hidden=0", "model.hsfe.branch_hidden must be >= 1, got 0"),
    ("model.hsfe.features=0", "model.hsfe.features must be >= 1, got 0"),
    ("model.hsfe.num_res_blocks=-1", "model.hsfe.num_res_blocks must be >= 0, got -1"),
    ("model.hsfe.stride=0", "model.hsfe.stride must be >= 1, got 0"),
    ("model.backbone.layers=[1, 0]", "model.backbone.layers[1] must be >= 1, got 0"),
    ("model.backbone.width=1", "model.backbone.width must be >= 2, got 1"),
    ("model.backbone.heads=0", "model.backbone.heads must be >= 1, got 0"),
    ("model.backbone.attn_dropout=1", "model.backbone.attn_dropout must be in [0, 1), got 1.0"),
    ("model.backbone.heads=3", "model.backbone.heads must divide the attention pool's width 512 "
                               "(model.backbone.width * 2**(stages-1) * 4), got 3"),
    ("model.temporal.layers=0", "model.temporal.layers must be >= 1, got 0"),
    ("model.temporal.heads=0", "model.temporal.heads must be >= 1, got 0"),
    ("model.temporal.mlp_ratio=0", "model.temporal.mlp_ratio must be > 0, got 0.0"),
    ("model.temporal.dropout=2", "model.temporal.dropout must be in [0, 1), got 2.0"),
    ("model.temporal.heads=3", "model.temporal.heads must divide model.embed_dim=64, got 3"),
    ("model.text.finetune_layers=-1", "model.text.finetune_layers must be >= 0, got -1"),
    ("model.text.context_length=0", "model.text.context_length must be >= 1, got 0"),
    ("model.text.width=0", "model.text.width must be >= 1, got 0"),
    ("model.text.layers=0", "model.text.layers must be >= 1, got 0"),
    ("model.text.heads=0", "model.text.heads must be >= 1, got 0"),
    (["model.text.kind=clip-text", "model.text.width=130"],
     "model.text.width must be divisible by model.text.heads=4 with kind=clip-text, got 130"),
    (["model.text.kind=clip-text", "model.text.context_length=1"],
     "model.text.context_length must be >= 2 with kind=clip-text (start and end tokens), got 1"),
    (["model.text.finetune=last-n", "model.text.finetune_layers=0"],
     "model.text.finetune_layers must be >= 1 with finetune=last-n (or use finetune=frozen), got 0"),
    ("model.fsve.time_steps=0", "model.fsve.time_steps must be >= 1, got 0"),
    ("model.fsve.tau=1", "model.fsve.tau must be > 1, got 1.0"),
    ("model.fsve.v_threshold=0", "model.fsve.v_threshold must be > 0, got 0.0"),
    ("model.fsve.surrogate_alpha=0", "model.fsve.surrogate_alpha must be > 0, got 0.0"),
    ("loss.init_logit_scale=0", "loss.init_logit_scale must be in (0, 100], got 0.0"),
    ("loss.init_logit_scale=101", "loss.init_logit_scale must be in (0, 100], got 101.0"),
    ("loss.max_logit_scale=0", "loss.max_logit_scale must be > 0, got 0.0"),
    ("loss.max_logit_scale=10", "loss.init_logit_scale must be in (0, 10], got 14.285714285714285"),
])
def test_out_of_range_values_name_the_key_and_the_allowed_range(override, message):
    overrides = [override] if isinstance(override, str) else override  # a list: a value valid only with others
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert str(err.value) == message
    with pytest.raises(ConfigError, match=re.escape(message)):  # a trial's overrides on a built config: the same
        apply_overrides(load_config(), parse_overrides(overrides))


def test_the_edges_of_every_range_are_allowed():
    cfg = load_config(overrides=["optim.lr=1e-9", "optim.weight_decay=0", "optim.betas=[0, 0.999]",
                                 "optim.min_lr_ratio=1", "optim.grad_clip=0", "train.max_steps=0",
                                 "train.checkpoint_every=0", "train.keep_checkpoints=1", "scale.num_workers=0",
                                 "scale.max_failures=-1", "scale.cpus_per_worker=0.01", "eval.few_shot_ks=[]",
                                 "eval.few_shot_steps=0", "eval.train_clips=0", "augment.hflip=1",
                                 "augment.vflip=0", "augment.spike_dropout=0.99", "data.materialize_max_mb=0"])
    assert cfg.optim.lr == 1e-9 and cfg.scale.max_failures == -1 and cfg.eval.few_shot_ks == ()


def test_the_edges_of_the_model_ranges_are_allowed():
    cfg = load_config(overrides=["model.hsfe.num_res_blocks=0", "model.hsfe.num_branches=1", "model.hsfe.radius=0",
                                 "model.backbone.width=2", "model.backbone.heads=1", "model.backbone.layers=[1]",
                                 "model.backbone.attn_dropout=0", "model.temporal.dropout=0.99",
                                 "model.temporal.mlp_ratio=0.01", "model.temporal.heads=64",
                                 "model.text.finetune_layers=0", "model.fsve.tau=1.01", "model.fsve.v_threshold=1e-3",
                                 "model.fsve.surrogate_alpha=1e-3",
                                 "loss.init_logit_scale=100", "loss.max_logit_scale=100"])
    assert cfg.model.hsfe.window == 1 and cfg.model.backbone.pool_width == 8 and cfg.loss.init_logit_scale == 100
    # values a text kind ignores are not held against it: MiniLM has its own width and heads
    assert load_config(overrides=["model.text.width=130", "model.text.context_length=1"]).model.text.width == 130
    # the backbone's heads only matter where its attention pool is built (not for a spiking backbone)
    snn = load_config(overrides=["model_preset=spklip-tiny-snn-backbone", "model.backbone.heads=3"])
    assert snn.model.backbone.heads == 3


@pytest.mark.parametrize("name", list_models())
def test_every_builtin_preset_passes_the_range_checks(name):
    assert load_config(overrides=[f"model_preset={name}"]).model == load_preset(name)
