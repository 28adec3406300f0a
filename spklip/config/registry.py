"""The model preset registry: named partial ModelCfg dicts, like open_clip's model configs.

Built in: one JSON file per preset in ``spklip/config/presets/`` (read when asked for, so an edit shows at once).
User code adds more with `add_model_config` (a YAML/JSON file or a dict); they live in this process only.
A preset holds only the keys that differ from the ModelCfg defaults; `spklip.model.create_model(name)` and
``model_preset=<name>`` in an experiment config type-check it (an unknown key raises a ConfigError naming it).

Pure data, kept in spklip.config: it imports neither torch nor spklip.model, so the config resolves
``model_preset`` here and never imports the model library (spklip.model re-exports these names).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_ADDED: dict[str, dict[str, Any]] = {}  # name -> preset dict, from add_model_config


class UnknownModelError(ValueError):
    """No preset of that name; the message lists the names there are."""


def list_models() -> list[str]:
    """Every preset name: the built-in JSON presets and those added by `add_model_config`, sorted."""
    return sorted({p.stem for p in PRESET_DIR.glob("*.json")} | set(_ADDED))


def get_model_config(name: str) -> dict[str, Any]:
    """A copy of preset `name`'s dict (a partial ModelCfg; the defaults fill the rest).

    Raises:
        UnknownModelError: no such preset (the message lists the available ones).
    """
    if name in _ADDED:
        return copy.deepcopy(_ADDED[name])
    path = PRESET_DIR / f"{name}.json"
    if not path.exists():
        raise UnknownModelError(f"unknown model preset {name!r}; available: {', '.join(list_models())}")
    return json.loads(path.read_text())


def add_model_config(path_or_dict: str | Path | dict[str, Any], name: str | None = None) -> str:
    """Register a preset from user code, for `create_model(name)` and ``model_preset=<name>``.

    Args:
        path_or_dict: a YAML (or JSON) file holding a partial ModelCfg mapping, or that mapping as a dict
            (nested sections as dicts: ``{"embed_dim": 32, "hsfe": {"radius": 3}}``).
        name: the preset's name; default the file's stem (required for a dict).

    Returns:
        The registered name. Adding a name again replaces the earlier one; a built-in preset cannot be replaced.
        Keys and values are checked when a model or config is built from it. The registry is per process: Ray
        workers get the resolved config, not the name, so they need no registration.
    """
    if isinstance(path_or_dict, dict):
        if not name:
            raise ValueError("add_model_config: a preset given as a dict needs a name")
        preset = copy.deepcopy(path_or_dict)
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise ValueError(f"add_model_config: {path} is not a file")
        preset = yaml.safe_load(path.read_text())  # YAML; JSON is YAML too
        name = name or path.stem
    if not isinstance(preset, dict):
        raise ValueError(f"add_model_config: preset {name!r} must be a mapping of ModelCfg keys, "
                         f"got {type(preset).__name__}")
    if (PRESET_DIR / f"{name}.json").exists():
        raise ValueError(f"add_model_config: {name!r} is a built-in preset; register it under another name")
    _ADDED[name] = preset
    return name
