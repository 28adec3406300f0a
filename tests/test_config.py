"""The typed config: YAML + dotted overrides, clear errors naming the key, flat-dict round trip, derived values."""

import dataclasses
import subprocess
import sys

import pytest

from spklip.config import ConfigError, ExperimentConfig, HsfeCfg, ModelCfg, apply_overrides, from_dict, load_config
from spklip.model.registry import get_model_config, list_models


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
    code = ("import sys, spklip.config, spklip.model.registry; spklip.config.load_config(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_yes_no_switches_parse_as_booleans_from_the_command_line():
    from spklip.config import load_config
    from spklip.train.launcher import _use_gpu

    for text, want in (("yes", True), ("no", False), ("true", True), ("false", False)):
        cfg = load_config(None, [f"scale.use_gpu={text}", f"data.materialize={text}"])
        assert cfg.scale.use_gpu is want and cfg.data.materialize is want and _use_gpu(cfg) is want
    with pytest.raises(ConfigError, match="scale.use_gpu"):
        load_config(None, ["scale.use_gpu=maybe"])
