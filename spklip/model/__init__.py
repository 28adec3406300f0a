"""The SPKLIP model library: pure torch (never imports ray or mlflow).

Public API: `create_model(name_or_cfg, **overrides) -> Spklip`, `list_models()`; `spklip.model.energy`.
"""

from spklip.model.factory import create_model, list_models, resolve_cfg
from spklip.model.spklip import Spklip

__all__ = ["Spklip", "create_model", "list_models", "resolve_cfg"]
