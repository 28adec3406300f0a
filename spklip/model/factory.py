"""Preset name or ModelCfg (+ overrides) -> ModelCfg -> Spklip. The presets themselves: spklip/config/registry.py."""

from __future__ import annotations

from typing import Any

from spklip.config.base import ConfigError, apply_overrides, from_dict
from spklip.config.model import LossCfg, ModelCfg
from spklip.config.registry import UnknownModelError, get_model_config
from spklip.model.spklip import Spklip


def resolve_cfg(name_or_cfg: str | ModelCfg, **overrides: Any) -> ModelCfg:
    """A preset name (see `spklip.model.list_models`) or ModelCfg, with overrides applied.

    Overrides are ModelCfg keys; nested keys use ``__`` (``hsfe__radius=3``) or a dict (``hsfe={"radius": 3}``).
    """
    if isinstance(name_or_cfg, str):
        try:
            preset = get_model_config(name_or_cfg)
        except UnknownModelError as e:
            raise ConfigError(str(e)) from None  # the message lists the preset names
        cfg = from_dict(ModelCfg, preset, prefix="model.")
    else:
        cfg = name_or_cfg
    if not isinstance(cfg, ModelCfg):
        raise TypeError(f"create_model expects a preset name or a ModelCfg, got {type(name_or_cfg).__name__}")
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if isinstance(value, dict):
            flat.update({f"{dotted}.{k}": v for k, v in _flatten(value).items()})
        else:
            flat[dotted] = value
    return apply_overrides(cfg, flat)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def create_model(name_or_cfg: str | ModelCfg, loss_cfg: LossCfg | None = None, **overrides: Any) -> Spklip:
    """Build a `Spklip` from a preset name (see `list_models`) or a ModelCfg.

    Args:
        name_or_cfg: ``"spklip-tiny"`` ... or a ModelCfg (e.g. ``experiment_cfg.model``).
        loss_cfg: initial/maximum logit scale (``experiment_cfg.loss``); LossCfg defaults if None.
        **overrides: ModelCfg fields, ``embed_dim=128``, ``hsfe__radius=3`` or ``hsfe={"radius": 3}``.

    Returns:
        The model; ``model.cfg`` is the resolved ModelCfg.
    """
    return Spklip(resolve_cfg(name_or_cfg, **overrides), loss_cfg)
