"""One typed experiment config, end to end (see experiment.py for precedence)."""

from spklip.config.augment import AugmentCfg
from spklip.config.base import (ConfigError, add_set_flag, apply_overrides, from_dict, parse_overrides, to_dict,
                                to_flat_dict)
from spklip.config.data import DataCfg
from spklip.config.experiment import ExperimentConfig, build_config, load_config
from spklip.config.model import BackboneCfg, FsveCfg, HsfeCfg, LossCfg, ModelCfg, TemporalCfg, TextCfg
from spklip.config.train import EvalCfg, OptimCfg, ScaleCfg, TrackingCfg, TrainCfg

__all__ = [
    "AugmentCfg", "ConfigError", "add_set_flag", "apply_overrides", "from_dict", "parse_overrides", "to_dict",
    "to_flat_dict", "DataCfg", "ExperimentConfig", "build_config", "load_config", "BackboneCfg", "FsveCfg", "HsfeCfg",
    "LossCfg", "ModelCfg", "TemporalCfg", "TextCfg", "EvalCfg", "OptimCfg", "ScaleCfg", "TrackingCfg", "TrainCfg",
]
