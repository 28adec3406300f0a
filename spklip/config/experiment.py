"""`ExperimentConfig`: the one typed config that flows from CLI/sweep to trainer to model.

Precedence, lowest first: dataclass defaults < the named model preset (``model_preset``) < an experiment YAML <
``--set`` dotted overrides < a Tune trial's dotted keys. `load_config` applies all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from spklip.config.augment import AugmentCfg
from spklip.config.base import (ConfigError, check_nonempty, deep_merge, from_dict, parse_overrides, safe_yaml_load,
                                 to_flat_dict, unflatten)
from spklip.config.data import DataCfg
from spklip.config.model import LossCfg, ModelCfg
from spklip.config.train import EvalCfg, OptimCfg, ScaleCfg, TrackingCfg, TrainCfg
from spklip.config.registry import UnknownModelError, get_model_config


@dataclass(frozen=True)
class ExperimentConfig:
    model_preset: str = "spklip-tiny"  # named architecture the model section starts from
    data: DataCfg = field(default_factory=DataCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    scale: ScaleCfg = field(default_factory=ScaleCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)

    def __post_init__(self):  # each section checks its own values when it is built; this is the top level's
        check_nonempty("model_preset", self.model_preset)

    def to_flat_dict(self) -> dict[str, Any]:
        return to_flat_dict(self)

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Any]) -> "ExperimentConfig":
        """Rebuild exactly from a flat dict (checkpoints, MLflow params); presets are not re-applied."""
        return from_dict(cls, unflatten(flat))


def build_config(raw: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Nested `raw` dict (e.g. a YAML file) plus flat dotted `overrides` -> validated ExperimentConfig."""
    nested = deep_merge(raw or {}, unflatten(overrides or {}))
    preset = nested.get("model_preset", ExperimentConfig.model_preset)
    if not isinstance(preset, str):
        raise ConfigError(f"model_preset: expected a string, got {preset!r}")
    try:
        preset_dict = get_model_config(preset)
    except UnknownModelError as e:
        raise ConfigError(str(e)) from None  # the message lists the preset names
    nested["model"] = deep_merge(preset_dict, nested.get("model", {}))
    return from_dict(ExperimentConfig, nested)


MAX_CONFIG_BYTES = 1 << 20  # an experiment YAML is a few KiB; a larger file is not a config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file `path`; every refusal is a ConfigError naming the file: missing, not a regular
    file, over `MAX_CONFIG_BYTES`, not UTF-8 (the byte and its offset), YAML aliases (`safe_yaml_load`), or not a
    mapping at the top level. YAML syntax errors stay `yaml.YAMLError` (the CLI words them with line and column)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {p.stat().st_size} bytes; a spklip config is at most "
                          f"{MAX_CONFIG_BYTES} bytes")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8") from None
    loaded = safe_yaml_load(text, str(p)) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return loaded


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict[str, Any] = (),
                defaults: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a YAML experiment file (optional) and apply ``key=value`` strings or a dotted dict on top.

    `defaults` (dotted keys, e.g. a sweep's base) sit below the YAML: defaults < preset < `defaults` < YAML < overrides.
    """
    raw: dict[str, Any] = unflatten(defaults or {})
    if path is not None:
        loaded = read_config_file(path)
        raw = deep_merge(raw, loaded)
    flat = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)
    return build_config(raw, flat)
