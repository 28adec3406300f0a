"""The SPKLIP model library: pure torch (never imports ray or mlflow).

Public API: `create_model(name_or_cfg, **overrides) -> Spklip`, `list_models()`, `add_model_config(path_or_dict)`
(register a preset from user code), `resolve_cfg`; `spklip.model.energy`. The presets are data in spklip.config
(`spklip.config.registry`), so a config never imports this package.
"""

from spklip.config.registry import add_model_config, get_model_config, list_models
from spklip.model.factory import create_model, resolve_cfg
from spklip.model.spklip import Spklip

__all__ = ["Spklip", "add_model_config", "create_model", "get_model_config", "list_models", "resolve_cfg"]
