"""Typed-config machinery shared by every section: dict/YAML -> frozen dataclasses, dotted overrides, flat dicts.

A config is a tree of frozen dataclasses. The three operations that cross process and file boundaries are
`from_dict` (nested dict -> dataclass, type-checked, unknown keys rejected), `apply_overrides` (dotted keys such as
``model.hsfe.radius=30`` on top of an existing config) and `to_flat_dict` (the flat ``{"a.b.c": value}`` form that
MLflow logs as params and checkpoints embed). Values coming from the command line are strings; they are parsed as
YAML scalars first (``--set train.epochs=3`` gives the int 3) and then checked against the field type.
No I/O happens at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
import unicodedata
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config key is unknown or a value has the wrong type or is out of range; the message names the dotted key."""


MAX_STR_CHARS = 1024  # any string value (paths, URIs, names, templates): longer ones are refused where read
MAX_NAME_CHARS = 250  # names MLflow keeps as keys (experiment, registered model, metric): its entity-key limit
MAX_LIST_ITEMS = 256  # any list value (few_shot_ks, templates, layers ...)
_SHOWN_CHARS = 80  # a value or key quoted in an error line is cut to this many characters


def short_repr(value: Any, limit: int = _SHOWN_CHARS) -> str:
    """``repr(value)``, cut to about `limit` characters (an error line quotes a 100,000-character value briefly)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def non_ascii_note(text: str) -> str:
    """``"contains non-ASCII character 'а' (U+0430 CYRILLIC SMALL LETTER A) at position 3"`` for the first
    non-ASCII character of `text` (position counted from 1), or "" when it is all ASCII: a look-alike letter
    (Cyrillic, Greek), a non-breaking or zero-width space in a key otherwise reads like a valid one."""
    for i, ch in enumerate(text):
        if ord(ch) > 127:
            name = unicodedata.name(ch, "unnamed character")
            shown = ch if ch.isprintable() and not ch.isspace() else ""
            return f"contains non-ASCII character {shown!r} (U+{ord(ch):04X} {name}) at position {i + 1}"
    return ""


def check_length(key: str, value: str, max_chars: int = MAX_STR_CHARS, *, max_bytes: int | None = None) -> None:
    """Raise ConfigError naming `key` when the string `value` is longer than `max_chars` characters (or, when given,
    `max_bytes` bytes of UTF-8: a folder name's limit). Such a value would fail only after Ray and MLflow started."""
    if len(value) > max_chars:
        raise ConfigError(f"{key} must be at most {max_chars} characters, got {len(value)}")
    if max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ConfigError(f"{key} must be at most {max_bytes} bytes in UTF-8 (it names a folder), got "
                          f"{len(value.encode('utf-8', 'surrogatepass'))}")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` is refused where it appears, so that a few hundred bytes of
    nested aliases (a "billion laughs" file) cannot expand to gigabytes. Anchors alone do nothing and are kept."""

    source = "YAML"

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise ConfigError(f"{self.source}: line {mark.line + 1}, column {mark.column + 1}: YAML aliases "
                              f"(*{event.anchor}) are not allowed in spklip configs; write the value out")
        return super().compose_node(parent, index)


def safe_yaml_load(text: str, source: str = "YAML") -> Any:
    """`yaml.safe_load` of `text` without aliases (`_NoAliasLoader`); `source` (a file name, ``--set KEY``) names
    where the text came from in a refusal. Syntax errors stay `yaml.YAMLError` (the CLI words them by line)."""
    loader = _NoAliasLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def check_range(key: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError naming `key` and the allowed range unless ``low <= value <= high`` (strict where open).

    NaN and the infinities lie outside every range. Used by the sections' ``__post_init__``, so a bad value fails
    where the config is built (``load_config``, ``apply_overrides``), before Ray or MLflow start.
    """
    ok = (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
          and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        raise ConfigError(f"{key} must be {_range_text(low, high, low_open, high_open)}, got {value!r}")


def check_nonempty(key: str, value: str) -> None:
    """Raise ConfigError naming `key` if the string `value` is empty."""
    if not value:
        raise ConfigError(f"{key} must not be empty")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        return f"tuple[{_type_name(args[0])}, ...]" if len(args) == 2 and args[1] is Ellipsis else str(tp)
    return getattr(tp, "__name__", str(tp))


def _split_list(text: str) -> list[Any]:
    """``"[2, 2]"`` or ``"2,2"`` -> ``[2, 2]``; items that are not YAML (``"a {}"``) stay strings."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    return [parse_value(item.strip()) for item in inner.split(",") if item.strip()]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to `tp` or raise ConfigError naming `key`. Only lossless conversions are made."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        note = non_ascii_note(value) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {short_repr(value)}"
                          + (f" ({note})" if note else ""))
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        telling = [e for e in errors if e.startswith(f"{key} must") or "non-ASCII" in e]  # the value's own arm
        raise ConfigError(telling[0] if telling else f"{key}: expected {_type_name(tp)}, got {short_repr(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None, got {value!r}")
    if origin is tuple or tp is tuple:
        if isinstance(value, str):
            value = _split_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list for {_type_name(tp)}, got {short_repr(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(f"{key} must hold at most {MAX_LIST_ITEMS} items, got {len(value)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value))) if args else tuple(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {short_repr(value)}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a bool (true/false), got {short_repr(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an int, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a float, got {short_repr(value)}")
    if tp is str:
        if isinstance(value, str):
            check_length(key, value)
            return value
        raise ConfigError(f"{key}: expected a string, got {short_repr(value)}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=False)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; missing keys keep their defaults, unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {short_repr(data)}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if k not in names), key=str)  # YAML keys may be numbers or null too
    if unknown:
        key = str(unknown[0])
        shown = key if len(key) <= _SHOWN_CHARS else f"{key[:_SHOWN_CHARS]}... ({len(key)} characters)"
        note = non_ascii_note(key)
        raise ConfigError(f"unknown config key {prefix}{shown}{' (' + note + ')' if note else ''} (valid keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form (tuples become lists so that YAML/JSON round-trip)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def to_flat_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.hsfe.radius": 30, ...}``: what MLflow logs and checkpoints store."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            flat.update(to_flat_dict(v, prefix + f.name + "."))
        else:
            flat[prefix + f.name] = list(v) if isinstance(v, tuple) else v
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of the flattening: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is a value, not a section")
        node[leaf] = value
    return nested


def parse_value(text: str, source: str = "a command-line value") -> Any:
    """A command-line value: parsed as a YAML scalar/list (``3`` -> 3, ``true`` -> True, ``[2,2]`` -> [2, 2]).

    YAML aliases are refused (ConfigError naming `source`): a value is text, never a reference."""
    try:
        return safe_yaml_load(text, source)
    except yaml.YAMLError:
        return text


SET_HELP = "dotted config override, repeatable (e.g. --set train.epochs=3)"


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; a missing ``=`` is an error."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, _, value = item.partition("=")
        out[key.strip()] = parse_value(value, f"--set {key.strip()[:_SHOWN_CHARS]}")
    return out


def add_set_flag(parser: argparse.ArgumentParser, help: str = SET_HELP, dest: str = "set") -> None:
    """The repeatable ``--set KEY=VALUE`` flag of every spklip command and sweep script; the raw strings land in
    ``args.<dest>`` (`parse_overrides` or `spklip.config.load_config` read them)."""
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(cfg: Any, flat: dict[str, Any]) -> Any:
    """Return a new config with dotted-key overrides applied (validated like `from_dict`)."""
    if not flat:
        return cfg
    return from_dict(type(cfg), deep_merge(to_dict(cfg), unflatten(flat)))
