"""Sweep machinery: a `SweepSpec` (base config, search space, metric) -> Ray Tune + Optuna + ASHA + MLflow.

`run_sweep` does, in order: resolve the config (absolute paths, tracking URI), connect to Ray (``RAY_ADDRESS`` /
``scale.address`` when set: a job or a cluster; else an in-process Ray), open the MLflow parent run, build (or, with
``resume``, restore) the `Tuner`, fit, and write the report (table, plots, best config) onto the parent run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from spklip.config import ExperimentConfig, apply_overrides
from spklip.tune.driver import SWEEP_FILE, trial_driver
from spklip.tune.space import SpaceFn, build_searcher, swept_keys


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep script states: a base config, a search space and the metric(s)."""

    name: str  # MLflow experiment and sweep folder prefix
    space: SpaceFn  # define-by-run: space(trial, base_cfg) -> constants | None (see spklip.tune.space)
    metrics: tuple[tuple[str, str], ...]  # (metric, "max"|"min"); several -> multi-objective (NSGA-II, no ASHA)
    base: dict[str, Any] = field(default_factory=dict)  # dotted overrides: the sweep's base config
    smoke: dict[str, Any] = field(default_factory=dict)  # extra overrides for --smoke-test
    num_samples: int = 24
    smoke_samples: int = 2
    scheduler: Literal["asha", "fifo"] = "asha"
    seed: int = 0
    description: str = ""
    # base config -> its values in the space's parameter names (steering ``_`` parameters included); lets
    # ``--first KEY=V1,V2`` run one-factor trials: KEY at each value, everything else swept at the base's value
    base_point: Callable[[ExperimentConfig], dict[str, Any]] | None = None
    # extra metrics shown in the report table beside the objectives (not optimised), e.g. zero-shot, energy
    report_metrics: tuple[tuple[str, str], ...] = ()
    # differences the report states with their 95 % interval: (column, a, b) -> "a - b" on the first metric and
    # the report metrics, e.g. ("variant", "hsfe", "average")
    gaps: tuple[tuple[str, str, str], ...] = ()


def first_points(spec: SweepSpec, cfg: ExperimentConfig, key: str, values: list[Any]) -> list[dict[str, Any]]:
    """Trials to evaluate before the searcher's own: `key` at each of `values`, the other swept parameters at the
    base config's values (``spec.base_point``). A controlled one-factor comparison inside the same sweep."""
    if spec.base_point is None:
        raise ValueError(f"sweep {spec.name} defines no base_point, so --first is not available")
    point = spec.base_point(cfg)
    if key not in point:
        raise ValueError(f"--first: {key!r} is not a parameter of this sweep; parameters: {', '.join(sorted(point))}")
    if not values:
        raise ValueError(f"--first {key}=: give at least one value")
    return [{**point, key: v} for v in values]


@dataclass
class SweepRun:
    """Where a sweep lives and what it found."""

    name: str
    path: Path  # Tune experiment folder
    parent_run_id: str | None
    tracking_uri: str
    table_markdown: str = ""
    report_dir: Path | None = None
    best_run_id: str | None = None


def sweep_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.run_dir).resolve() / "sweeps"


def sweep_config(spec: SweepSpec, path: str | Path | None = None, overrides: list[str] | dict[str, Any] = (),
                 smoke: bool = False) -> ExperimentConfig:
    """The sweep's base config. Precedence, lowest first: defaults < the spec's model preset < the spec's base
    (+ smoke) overrides < the experiment YAML `path` < `overrides` (``--set``). Presets are resolved here, so a spec
    that names ``model_preset`` gets that preset's whole model section."""
    import yaml

    from spklip.config import ConfigError, build_config, parse_overrides
    from spklip.config.base import deep_merge, unflatten

    raw = unflatten({**spec.base, **(spec.smoke if smoke else {})})
    if path is not None:
        if not Path(path).exists():
            raise ConfigError(f"config file {path} does not exist")
        raw = deep_merge(raw, yaml.safe_load(Path(path).read_text()) or {})
    flat = dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)
    return build_config(raw, flat)


def resolve_base(cfg: ExperimentConfig, spec: SweepSpec) -> ExperimentConfig:
    """Absolute paths and an explicit tracking URI, so trials (which run in other processes and folders) mean the
    same files and the same MLflow store; the experiment is named after the sweep unless the config names one."""
    from spklip.tracking import resolve_uri

    run_dir = Path(cfg.train.run_dir).resolve()
    return apply_overrides(cfg, {
        "data.path": str(Path(cfg.data.path).resolve()), "train.run_dir": str(run_dir),
        "tracking.uri": resolve_uri(cfg.tracking.uri, run_dir),
        "tracking.experiment": cfg.tracking.experiment if cfg.tracking.experiment != "spklip" else spec.name})


def latest_sweep(root: Path, prefix: str) -> Path:
    found = sorted((p for p in root.glob(f"{prefix}-*") if (p / SWEEP_FILE).exists()), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no sweep named {prefix}-* to resume under {root}")
    return found[-1]


def _open_parent(cfg: ExperimentConfig, spec: SweepSpec, name: str, swept: list[str], num_samples: int,
                 seeds: int = 1):
    from spklip.tracking import start_run
    from spklip.tune.report import METRICS_TAG, ROLE_TAG, SWEPT_TAG

    shown = [list(m) for m in spec.metrics + spec.report_metrics]
    tags = {ROLE_TAG: "parent", SWEPT_TAG: json.dumps(swept), METRICS_TAG: json.dumps(shown),
            "spklip.sweep.name": spec.name, "spklip.sweep.folder": name}
    params = {f"sweep.{k}": v for k, v in {"num_samples": num_samples, "scheduler": spec.scheduler,
                                            "seed": spec.seed, "metric": spec.metrics[0][0], "seeds": seeds}.items()}
    params.update({k: v for k, v in cfg.to_flat_dict().items() if k not in swept})
    return start_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.train.run_dir, run_name=name, params=params,
                     tags=tags)


def max_concurrent_trials(cfg: ExperimentConfig) -> int:
    """Trials that fit at once: each holds 0.25 CPU (its driver) + the Train workers; half a CPU stays for Ray Data
    (a small training split is decoded once, `spklip.train.data.materialize_train`, so epochs run no read tasks).
    On 2 CPUs with one 0.5-CPU worker per trial that is two trials at once, one core each."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    per_trial = 0.25 + max(1, cfg.scale.num_workers) * cfg.scale.cpus_per_worker
    return max(1, int((cpus - 0.5) // per_trial))


def _tuner(spec: SweepSpec, cfg: ExperimentConfig, sweep: dict[str, Any], path: Path, num_samples: int,
           resume: bool, points: list[dict[str, Any]] = (), max_concurrent: int | None = None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=sweep), {"cpu": 0.25})
    if resume:
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    single = len(spec.metrics) == 1
    metric, mode = spec.metrics[0]
    # max_t one past the last epoch: a trial that trains all its epochs ends by itself (and closes its MLflow run)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs + 1, grace_period=1,
                              reduction_factor=2) if single and spec.scheduler == "asha" else FIFOScheduler()
    searcher = build_searcher(spec.space, cfg, list(spec.metrics), spec.seed,
                              max_concurrent or max_concurrent_trials(cfg), points)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                    **({"metric": metric, "mode": mode} if single else {})),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent),
                                  failure_config=tune.FailureConfig(max_failures=0)))  # a code error repeats


def run_sweep(spec: SweepSpec, cfg: ExperimentConfig, *, num_samples: int | None = None, smoke: bool = False,
              resume: bool = False, name: str | None = None,
              points: list[dict[str, Any]] = (), seeds: int = 1, max_concurrent: int | None = None) -> SweepRun:
    """Run (or resume) a sweep and report it; see the module docstring.

    Args:
        spec: the sweep (base config, space, metrics).
        cfg: the sweep's base config, e.g. from `sweep_config` (spec base, smoke settings, YAML, ``--set``).
        num_samples: trials (default: the spec's, or its smoke count).
        smoke: a smoke run (names the folder ``<spec>-smoke-...`` and picks the spec's smoke trial count).
        resume: restore the sweep folder `name` (default: the newest of this spec) with ``Tuner.restore``:
            finished trials are kept, unfinished ones continue from their last checkpoint.
        name: sweep folder name under ``<train.run_dir>/sweeps`` (default ``<spec.name>-<timestamp>``).
        points: parameter dicts to evaluate first (`first_points`); they count towards `num_samples`.
        seeds: train every configuration this many times (``train.seed``/``data.seed`` + 0..seeds-1); the report
            aggregates them (mean, 95 % interval) and says when a difference is within noise.
        max_concurrent: trials at once (default `max_concurrent_trials`).
    """
    from spklip.train.launcher import ensure_ray
    from spklip.tune.finish import finish_sweep

    root = sweep_root(cfg)
    if resume:
        path = root / name if name else latest_sweep(root, spec.name)
        sweep = json.loads((path / SWEEP_FILE).read_text())
        cfg = ExperimentConfig.from_flat_dict(sweep["base"])
    else:
        cfg = resolve_base(cfg, spec)
        path = root / (name or f"{spec.name}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (path / SWEEP_FILE).exists():
            raise ValueError(f"sweep {path} exists; pass --resume to continue it or another --name")
        sweep = _new_sweep(spec, cfg, path, num_samples or (spec.smoke_samples if smoke else spec.num_samples), seeds)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    ensure_ray(cfg.scale.address)
    tuner = _tuner(spec, cfg, sweep, path, sweep["num_samples"], resume, list(points), max_concurrent)
    results = tuner.fit()
    return finish_sweep(spec, cfg, sweep, path, results)


def _new_sweep(spec: SweepSpec, cfg: ExperimentConfig, path: Path, num_samples: int, seeds: int = 1) -> dict[str, Any]:
    """Open the MLflow parent run and write the sweep file a later --resume reads."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    swept = swept_keys(spec.space, cfg)
    parent = _open_parent(cfg, spec, path.name, swept, num_samples, seeds) if cfg.tracking.enabled else None
    sweep = {"base": cfg.to_flat_dict(), "storage": str(path / "train"), "tracking_uri": cfg.tracking.uri,
             "parent_run_id": parent.run_id if parent is not None and parent.enabled else None,
             "metrics": [list(m) for m in spec.metrics], "swept": swept, "num_samples": num_samples,
             "spec": spec.name, "seeds": seeds, "table_metrics": [list(m) for m in spec.metrics + spec.report_metrics]}
    path.mkdir(parents=True, exist_ok=True)
    (path / SWEEP_FILE).write_text(json.dumps(sweep, indent=1))
    return sweep
