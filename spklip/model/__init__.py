"""The SPKLIP model library: pure torch (never imports ray or mlflow).

Public API: `create_model(name_or_cfg, **overrides) -> Spklip`, `list_models()`, `add_model_config(path_or_dict)`
(register a preset from user code), `resolve_cfg`; `spklip.model.energy`.
"""

import importlib

from spklip.model.registry import add_model_config, get_model_config, list_models

# The torch-backed names load on first use: spklip.config imports spklip.model.registry (to resolve model_preset),
# which runs this file first, and a config must not cost a torch import.
_LAZY = {"Spklip": "spklip.model.spklip", "create_model": "spklip.model.factory", "resolve_cfg": "spklip.model.factory"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Spklip", "add_model_config", "create_model", "get_model_config", "list_models", "resolve_cfg"]
