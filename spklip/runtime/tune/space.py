"""Search spaces as define-by-run functions over dotted config keys, and what spklip derives from them.

A sweep's space is a function ``space(trial, base) -> dict | None``: it calls ``trial.suggest_*`` with dotted config
keys as parameter names (``"model.hsfe.radius"``) and may return constants that go with the sampled values (e.g.
``{"model.hsfe.step": "auto"}`` when K = 1). Conditional spaces are plain ``if``s, and ranges may depend on earlier
choices and on the base config (``base.model.num_planes``), so invalid combinations are not sampled in the first
place. Parameters whose names start with ``_`` steer the sampling but are not config keys (Optuna needs a fixed set
of choices per categorical name, so "step: auto or a number" is ``_step_mode`` + ``model.hsfe.step``).

From the space alone (no training) spklip derives, by walking its branches with a stand-in trial (`_Walk`):
  * `space_keys`: every config key it can set (the report's parameter columns), exactly, over every categorical
    branch;
  * `base_point`: the base config as a point of the space (``--first KEY=V1,V2`` varies one key around it).
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Callable, Iterator, Sequence

import optuna
import ray.cloudpickle
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from spklip.config import ConfigError, ExperimentConfig, apply_overrides

AUX_PREFIX = "_"
SpaceFn = Callable[[Any, ExperimentConfig], "dict[str, Any] | None"]
MAX_BRANCHES = 4096  # a space with more categorical branches than this is walked only this far


def config_params(params: dict[str, Any]) -> dict[str, Any]:
    """The config overrides among a trial's sampled parameters (auxiliary ``_...`` names dropped)."""
    return {k: v for k, v in params.items() if not k.startswith(AUX_PREFIX)}


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The config a trial trains: `base` with the sampled dotted keys applied (ConfigError if the corner is invalid)."""
    return apply_overrides(base, config_params(params))


def _same(a: Any, b: Any) -> bool:
    """Config values compare equal across their YAML/JSON forms (a tuple field against a sampled list)."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


class _Inconsistent(Exception):
    """The walked branch sets a key to another value than the base config's (base-point search only)."""


class _Walk:
    """A stand-in for ``optuna.Trial`` that walks one branch of a space without sampling.

    The i-th categorical call takes choice ``path[i]`` (0 past the end of `path`); numeric suggestions take the base
    config's value when it lies in range, else the low end. With ``follow_base`` a categorical over a config key
    takes the base's value, and any config key that cannot equal the base's ends the walk (`_Inconsistent`).
    """

    def __init__(self, base: dict[str, Any], path: Sequence[int] = (), follow_base: bool = False):
        self.base, self.path, self.follow_base = base, list(path), follow_base
        self.taken: list[int] = []  # choice index per categorical call
        self.widths: list[int] = []  # number of choices per categorical call
        self.params: dict[str, Any] = {}

    def _check(self, name: str, value: Any) -> Any:
        if self.follow_base and not name.startswith(AUX_PREFIX) and not _same(value, self.base.get(name)):
            raise _Inconsistent(name)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if self.follow_base and not name.startswith(AUX_PREFIX):
            index = next((i for i, c in enumerate(choices) if _same(c, self.base.get(name))), None)
            if index is None:
                raise _Inconsistent(name)
            width = 1  # nothing to branch on: the base decides
        else:
            depth = len(self.taken)
            index, width = (self.path[depth] if depth < len(self.path) else 0), len(choices)
        self.taken.append(index if width > 1 else 0)
        self.widths.append(width)
        return self._check(name, choices[index])

    def _number(self, name: str, low, high, cast):
        value = self.base.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return self._check(name, cast(value) if ok else low)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._number(name, low, high, int)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._number(name, low, high, float)


def _walks(space: SpaceFn, base: ExperimentConfig, follow_base: bool = False) -> Iterator[tuple[_Walk, dict]]:
    """Every categorical branch of `space` once (depth first), as (walk, returned constants)."""
    flat = base.to_flat_dict()
    todo: list[list[int]] = [[]]
    for _ in range(MAX_BRANCHES):
        if not todo:
            return
        path = todo.pop()
        walk = _Walk(flat, path, follow_base)
        try:
            extra = space(walk, base) or {}
        except _Inconsistent:
            extra = None
        # the decisions this walk made first (past `path`) each open their other choices as new branches
        for depth in range(len(path), len(walk.taken)):
            todo.extend(walk.taken[:depth] + [j] for j in range(1, walk.widths[depth]))
        if extra is not None:
            yield walk, extra


def space_keys(space: SpaceFn, base: ExperimentConfig) -> list[str]:
    """The config keys `space` can set (sampled or returned), in first-seen order, over all its branches."""
    keys: dict[str, None] = {}
    for walk, extra in _walks(space, base):
        keys.update(dict.fromkeys(config_params({**walk.params, **extra})))
    return list(keys)


def closest(key: str, keys) -> str:
    """`` (did you mean 'K'?)`` with the valid key nearest to a misspelled `key` (difflib), or ``""`` if none is close."""
    near = difflib.get_close_matches(key, list(keys), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def check_space_keys(space: SpaceFn, base: ExperimentConfig) -> list[str]:
    """`space_keys`, each checked against the config before any trial runs: a key the config does not have would make
    every trial a skipped one, so it is a ConfigError naming the key and the closest config key."""
    valid = base.to_flat_dict()
    keys = space_keys(space, base)
    for key in keys:
        if key not in valid:
            raise ConfigError(f"sweep space key {key!r} is not a config key{closest(key, valid)}")
    return keys


def base_point(space: SpaceFn, base: ExperimentConfig) -> dict[str, Any]:
    """The base config as a point of `space`: its value for every key the space samples, and the steering (``_``)
    choices under which the space reproduces the base. Raises ValueError when no branch does."""
    flat = base.to_flat_dict()
    for walk, extra in _walks(space, base, follow_base=True):
        if all(_same(v, flat.get(k)) for k, v in config_params(extra).items()):
            return walk.params
    raise ValueError("the base config is not a point of this sweep's space (no branch reproduces it), so --first "
                     "cannot vary one parameter around it")


def sample_space(space: SpaceFn, base: ExperimentConfig, samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Draw `samples` parameter sets from a space with a seeded random sampler, as a trial would see them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(samples):
        trial = study.ask()
        extra = space(trial, base) or {}
        out.append({**trial.params, **extra})
        study.tell(trial, 0.0)
    return out


def _importable(module_name: str) -> bool:
    """Whether a fresh process could import `module_name` (its top-level package is findable; sys.modules, which
    holds modules loaded from a file path too, is not consulted)."""
    top = module_name.partition(".")[0]
    return any(getattr(finder, "find_spec", None) and finder.find_spec(top, None) for finder in sys.meta_path)


def _unpickle_space(blob: bytes, base: ExperimentConfig) -> "BoundSpace":
    return BoundSpace(ray.cloudpickle.loads(blob), base)


class BoundSpace:
    """`space` with its base config bound: the ``f(trial)`` OptunaSearch calls.

    OptunaSearch saves itself with plain pickle on every Tune checkpoint, which stores a function by module name; a
    space defined in a script (``__main__``, or loaded from a path by ``spklip sweep x.py``) then could not be found
    by a resume started another way. cloudpickle stores such a function by value (an importable one, like spklip's
    own sweeps in `spklip.sweeps`, by reference), so a restored searcher works whatever the entry point.
    """

    def __init__(self, space: SpaceFn, base: ExperimentConfig):
        self.space, self.base = space, base

    def __call__(self, trial) -> dict[str, Any] | None:
        return self.space(trial, self.base)

    def __reduce__(self):
        module = sys.modules.get(getattr(self.space, "__module__", "") or "")
        if module is not None and module.__name__ != "__main__" and not _importable(module.__name__):
            ray.cloudpickle.register_pickle_by_value(module)  # loaded from a file path: not importable elsewhere
        return _unpickle_space, (ray.cloudpickle.dumps(self.space), self.base)


def build_searcher(space: SpaceFn, base: ExperimentConfig, metrics: Sequence[tuple[str, str]], seed: int,
                   max_concurrent: int, points: Sequence[dict[str, Any]] = ()) -> ConcurrencyLimiter:
    """OptunaSearch over `space` (TPE for one objective, NSGA-II for several), seeded, behind a concurrency limit.
    `points` (full parameter dicts) are enqueued and evaluated first, in order."""
    if len(metrics) == 1:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
        metric, mode = metrics[0]
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        metric, mode = [m for m, _ in metrics], [md for _, md in metrics]
    search = OptunaSearch(BoundSpace(space, base), metric=metric, mode=mode, sampler=sampler,
                          points_to_evaluate=list(points) or None)
    return ConcurrencyLimiter(search, max_concurrent=max_concurrent)
