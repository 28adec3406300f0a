"""Search spaces as define-by-run functions over dotted config keys, plus the validity check every trial passes.

A sweep's space is a function ``space(trial, base) -> dict | None``: it calls ``trial.suggest_*`` with dotted config
keys as parameter names (``"model.hsfe.radius"``) and may return constants that go with the sampled values (e.g.
``{"model.hsfe.step": "auto"}`` when K = 1). Conditional spaces are plain ``if``s, and ranges may depend on earlier
choices and on the base config (``base.model.num_planes``), so invalid combinations are not sampled in the first
place. Parameters whose names start with ``_`` steer the sampling but are not config keys (Optuna needs a fixed set
of choices per categorical name, so "step: auto or a number" is ``_step_mode`` + ``model.hsfe.step``).

What a trial finally trains is ``apply_overrides(base, config_params(params))``; if that still raises a
`ConfigError` (a space that allows an invalid corner), the trial is skipped with the reason, never run half-way.
"""

from __future__ import annotations

from typing import Any, Callable

from spklip.config import ConfigError, ExperimentConfig, apply_overrides

AUX_PREFIX = "_"
SpaceFn = Callable[[Any, ExperimentConfig], "dict[str, Any] | None"]


def config_params(params: dict[str, Any]) -> dict[str, Any]:
    """The config overrides among a trial's sampled parameters (auxiliary ``_...`` names dropped)."""
    return {k: v for k, v in params.items() if not k.startswith(AUX_PREFIX)}


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """The config a trial trains: `base` with the sampled dotted keys applied (raises ConfigError if invalid)."""
    return apply_overrides(base, config_params(params))


def invalid_reason(base: ExperimentConfig, params: dict[str, Any]) -> str | None:
    """None if the sampled parameters make a valid config, else the ConfigError message."""
    try:
        trial_config(base, params)
    except ConfigError as e:
        return str(e)
    return None


def _load_space(source: str, qualname: str) -> SpaceFn:
    """Import the space function `qualname` from the script file `source` (for unpickling a restored searcher)."""
    import importlib.util
    import sys

    mod_name = f"spklip_space_{abs(hash(source))}"
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    return getattr(module, qualname)


def _rebuild(source: str, qualname: str, base_flat: dict[str, Any]) -> "BoundSpace":
    return BoundSpace(_load_space(source, qualname), ExperimentConfig.from_flat_dict(base_flat))


class BoundSpace:
    """A space with its base config bound, callable as ``f(trial)`` by OptunaSearch.

    Tune pickles the searcher on every checkpoint and `Tuner.restore` unpickles it, possibly in another process
    that loaded the sweep script under another module name (``python sweeps/x.py`` vs ``spklip sweep x``), so it
    pickles as (script file, function name, flat base config) and re-imports the function on load.
    """

    def __init__(self, space: SpaceFn, base: ExperimentConfig):
        self.space, self.base = space, base
        self.__name__ = getattr(space, "__name__", "space")

    def __call__(self, trial) -> dict[str, Any] | None:
        return self.space(trial, self.base)

    def __reduce__(self):
        import inspect

        return _rebuild, (inspect.getfile(self.space), self.space.__qualname__, self.base.to_flat_dict())


def define_by_run(space: SpaceFn, base: ExperimentConfig) -> BoundSpace:
    """Bind the base config into a space so OptunaSearch can call it as ``f(trial)``."""
    return BoundSpace(space, base)


def swept_keys(space: SpaceFn, base: ExperimentConfig, samples: int = 64, seed: int = 0) -> list[str]:
    """The config keys a space can set, found by sampling it with Optuna's random sampler (no training)."""
    keys: dict[str, None] = {}
    for params in sample_space(space, base, samples, seed):
        keys.update(dict.fromkeys(config_params(params)))
    return list(keys)


def sample_space(space: SpaceFn, base: ExperimentConfig, samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Draw `samples` parameter sets from a space with a seeded random sampler, as a trial would see them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(samples):
        trial = study.ask()
        extra = space(trial, base) or {}
        out.append({**trial.params, **extra})
        study.tell(trial, 0.0)
    return out


def build_searcher(space: SpaceFn, base: ExperimentConfig, metrics: list[tuple[str, str]], seed: int,
                   max_concurrent: int, points: list[dict[str, Any]] = ()):
    """OptunaSearch over `space` (TPE for one objective, NSGA-II for several), seeded, behind a concurrency limit.
    `points` (full parameter dicts) are enqueued and evaluated first, in order."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if len(metrics) == 1:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
        metric, mode = metrics[0]
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        metric, mode = [m for m, _ in metrics], [md for _, md in metrics]
    search = OptunaSearch(define_by_run(space, base), metric=metric, mode=mode, sampler=sampler,
                          points_to_evaluate=list(points) or None)
    return ConcurrencyLimiter(search, max_concurrent=max_concurrent)
