"""A sweep: a `SweepSpec` (base config, search space, metric) -> Ray Tune + Optuna + ASHA over Ray Train runs,
tracked as one MLflow parent run with a child run per trial (and per seed).

The path of a trial, one typed value per hop:
  ``SweepSpec`` + CLI --> `sweep_config` (ExperimentConfig) --> `run_sweep` --> `SweepContext` (frozen: base config
  with absolute paths, parent run, metrics, seeds; also written to the sweep folder for ``--resume``) --> Tune calls
  `run_trial(params, ctx)` in a trial actor --> the sampled dotted keys applied once to ``ctx.base`` -->
  `spklip.runtime.launcher.fit(RunSpec)` --> `WorkerPlan` --> the loop in the trial's process (local mode,
  ``scale.num_workers=0``, the sweep specs' default) or each Ray Train worker.

Handing a ``TorchTrainer`` to a ``Tuner`` is an error in Ray 2.60 (Train V2); each trial calls `fit` with
``TuneReportCallback``, which forwards rank 0's reports to Tune (in local mode the loop calls it, Ray Train does
not), so ASHA and the searcher see ``val/top1`` after every evaluation. The Train run is named after the trial id
(no timestamp): when a sweep is restored, an unfinished trial's Train run finds its own checkpoints and MLflow child
run again and continues.

Where a sweep lives: its local folder ``<train.run_dir>/sweeps/<name>`` (spklip.log, the report, the tracking spool)
and its Tune experiment (Tune's state, the trials' Train runs and checkpoints, `SWEEP_FILE`), which is the same
folder unless ``--storage`` names another root, e.g. ``s3://bucket/sweeps``: then the experiment is
``s3://bucket/sweeps/<name>`` and ``--resume --storage s3://bucket/sweeps`` continues it from there, on any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from spklip.config import ConfigError, ExperimentConfig, load_config
from spklip.data import storage
from spklip.data.smoke import ensure_smoke_data
from spklip.outdir import private_dir, private_files
from spklip.train.ownership import check_name, lock_folder
from spklip.eval.stats import summarize
from spklip.runtime.launcher import fit
from spklip.runtime.logs import RunOutput
from spklip.runtime.model_log import log_encoder
from spklip.runtime.plan import RunSpec, check_local_storage, resolve_paths, worker_resources
from spklip.runtime.rayenv import ensure_ray, ray_logs_dir, ray_storage
from spklip.runtime.tracking import BEST_ALIAS, SPOOL_DIR, Tracker, start_run
from spklip.runtime.tune import report as rep
from spklip.runtime.tune.cli import add_sweep_args, parse_first
from spklip.runtime.tune.space import (AUX_PREFIX, SpaceFn, base_point, build_searcher, check_space_keys, closest,
                                config_params, space_keys, trial_config)

SWEEP_FILE = "spklip_sweep.json"  # in the Tune experiment folder: the `SweepContext` a --resume reads back
Metrics = tuple[tuple[str, str], ...]  # ((name, "max" | "min"), ...)


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep script states: a base config, a search space and the metric(s)."""

    name: str  # MLflow experiment and sweep folder prefix
    space: SpaceFn  # define-by-run: space(trial, base_cfg) -> constants | None (see spklip.runtime.tune.space)
    metrics: Metrics  # (metric, "max"|"min"); several -> multi-objective (NSGA-II, no ASHA)
    base: dict[str, Any] = field(default_factory=dict)  # dotted overrides: the sweep's base config
    smoke: dict[str, Any] = field(default_factory=dict)  # extra overrides for --smoke-test
    num_samples: int = 24
    smoke_samples: int = 2
    scheduler: Literal["asha", "fifo"] = "asha"
    seed: int = 0
    description: str = ""
    # extra metrics shown in the report table beside the objectives (not optimised), e.g. zero-shot, energy
    report_metrics: Metrics = ()
    # differences the report states with their 95 % interval: (column, a, b) -> "a - b" on the first metric and
    # the report metrics, e.g. ("variant", "hsfe", "average")
    gaps: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class SweepContext:
    """What `run_sweep` decided once and every trial needs; saved as the sweep file so ``--resume`` is exact."""

    spec: str  # the SweepSpec's name
    base: ExperimentConfig  # absolute paths, explicit tracking URI and experiment
    storage: str  # Ray Train storage of the trials' runs
    parent_run_id: str | None  # the sweep's MLflow run (None: tracking off)
    metrics: Metrics  # the objectives
    table_metrics: Metrics  # objectives + report metrics: the report's columns
    swept: tuple[str, ...]  # config keys the space can set
    num_samples: int
    seeds: int = 1
    gaps: tuple[tuple[str, str, str], ...] = ()

    @property
    def tracking_uri(self) -> str:
        return self.base.tracking.uri

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "base": self.base.to_flat_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepContext":
        tup = lambda rows: tuple(tuple(r) for r in rows)  # noqa: E731  (JSON lists back to tuples)
        return cls(spec=d["spec"], base=ExperimentConfig.from_flat_dict(d["base"]), storage=d["storage"],
                   parent_run_id=d["parent_run_id"], metrics=tup(d["metrics"]),
                   table_metrics=tup(d.get("table_metrics", d["metrics"])), swept=tuple(d["swept"]),
                   num_samples=int(d["num_samples"]), seeds=int(d.get("seeds", 1)), gaps=tup(d.get("gaps", ())))

    def save(self, folder: Path | str) -> None:
        """Write `SWEEP_FILE` into the Tune experiment `folder` (a local folder or a URI)."""
        storage.write_text(storage.join(folder, SWEEP_FILE), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, folder: Path | str) -> "SweepContext":
        return cls.from_dict(json.loads(storage.read_text(storage.join(folder, SWEEP_FILE))))


@dataclass
class SweepRun:
    """Where a sweep lives and what it found."""

    name: str
    path: Path  # the sweep's local folder (the Tune experiment too, unless it is stored elsewhere: --storage)
    parent_run_id: str | None
    tracking_uri: str
    table_markdown: str = ""
    report_dir: Path | None = None
    best_run_id: str | None = None
    failed: int = 0  # trials that ended in an error (their seeds included); the report covers the others


def sweep_config(spec: SweepSpec, path: str | Path | None = None, overrides: Sequence[str] | dict[str, Any] = (),
                 smoke: bool = False) -> ExperimentConfig:
    """The sweep's base config. Precedence, lowest first: defaults < the spec's model preset < the spec's base
    (+ smoke) overrides < the experiment YAML `path` < `overrides` (``--set``)."""
    return load_config(path, overrides, defaults={**spec.base, **(spec.smoke if smoke else {})})


def first_points(spec: SweepSpec, cfg: ExperimentConfig, key: str, values: list[Any]) -> list[dict[str, Any]]:
    """Trials to evaluate before the searcher's own: `key` at each of `values`, the other swept parameters at the
    base config's values (`spklip.runtime.tune.space.base_point`). A controlled one-factor comparison inside one sweep."""
    point = base_point(spec.space, cfg)
    if key not in point:
        raise ConfigError(f"--first: {key!r} is not a parameter of this sweep{closest(key, point)}; parameters: "
                          f"{', '.join(sorted(point))}")
    if not values:
        raise ConfigError(f"--first {key}=: give at least one value")
    return [{**point, key: v} for v in values]


def sweep_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.run_dir).resolve() / "sweeps"


def latest_sweep(root: Path | str, prefix: str) -> Path | str:
    """The newest sweep ``<prefix>-*`` under `root`: by modification time in a folder, by name (the default names
    end in their start time) under a URI."""
    if storage.is_uri(root):
        names = sorted(f.split("/")[0] for f in storage.list_files(root)
                       if f.startswith(f"{prefix}-") and f.count("/") == 1 and f.endswith("/" + SWEEP_FILE))
        found = [storage.join(root, n) for n in names]
    else:
        found = sorted((p for p in Path(root).glob(f"{prefix}-*") if (p / SWEEP_FILE).exists()),
                       key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no sweep named {prefix}-* to resume under {root}")
    return found[-1]


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What a trial's actor holds: 0.25 CPU (its driver) and, in local mode (``scale.num_workers=0``: the trial's
    own process trains), also one worker's share, ``scale.cpus_per_worker`` CPUs and on GPUs ``scale.gpus_per_worker``
    (Ray then shows the trial its GPU). With Ray Train workers, they hold their own."""
    if cfg.scale.num_workers:
        return {"cpu": 0.25}
    gpu, per_worker = worker_resources(cfg)
    return {"cpu": 0.25 + per_worker["CPU"], **({"gpu": per_worker["GPU"]} if gpu else {})}


def max_concurrent_trials(cfg: ExperimentConfig) -> int:
    """Trials that fit at once: each holds 0.25 CPU (its driver) + one share per Train worker (local mode: one, in the
    trial's own process); half a CPU stays for Ray Data (a small training split is decoded once,
    `spklip.runtime.reader.materialize_train`, so epochs run no read tasks). On 2 CPUs with one 0.5-CPU share per
    trial that is two trials at once, one core each."""
    cluster = ray.cluster_resources()
    workers = max(1, cfg.scale.num_workers)
    per_trial = 0.25 + workers * cfg.scale.cpus_per_worker
    fits = max(1, int((cluster.get("CPU", 1) - 0.5) // per_trial))
    gpu, per_worker = worker_resources(cfg)
    if gpu:  # GPU workers: also what the GPUs hold (scale.gpus_per_worker=0.25: four one-worker trials per GPU)
        fits = min(fits, max(1, int(cluster.get("GPU", 0) // (workers * per_worker["GPU"]))))
    return fits


def seed_config(cfg: ExperimentConfig, offset: int) -> ExperimentConfig:
    """`cfg` with ``train.seed`` (init, augmentation, dropout) and ``data.seed`` (data order) moved by `offset`."""
    if not offset:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + offset),
                               data=dataclasses.replace(cfg.data, seed=cfg.data.seed + offset))


def trial_run_name(trial_id: str) -> str:
    """The Train run (and MLflow child run) name of a trial: stable across a resume, so the run is found again."""
    return f"train-trial_id={trial_id}"


def _worst(mode: str) -> float:
    return float("-inf") if mode == "max" else float("inf")


def run_trial(params: dict[str, Any], ctx: SweepContext) -> None:
    """The Tune trainable: the sampled dotted keys applied once to ``ctx.base``, then `fit`, once per seed.

    A sample the config rejects (a corner the space let through) is recorded as a skipped child run with the reason
    and scored worst; nothing trains. With one seed, rank 0's per-epoch reports go to Tune (ASHA can stop the
    trial). With N seeds the trial trains N runs one after another (``train.seed``/``data.seed`` + 0..N-1, each its
    own MLflow child run tagged with the trial and the seed) and reports once: the mean over seeds of every metric,
    plus ``<metric>/ci95`` (the 95 % interval's half-width) and ``<metric>/seeds``.
    """
    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(trial_id)
    try:
        cfg = trial_config(ctx.base, params)
    except ConfigError as e:
        if ctx.parent_run_id:
            start_run(ctx.tracking_uri, ctx.base.tracking.experiment, ctx.base.train.run_dir, run_name=run_name,
                      params=config_params(params), tags={rep.SKIPPED_TAG: str(e)[:500]},
                      parent_run_id=ctx.parent_run_id).terminate("KILLED")
        tune.report({**{m: _worst(mode) for m, mode in ctx.metrics}, "skipped": 1.0})
        return
    labels = {rep.LABEL_PREFIX + k[len(AUX_PREFIX):]: str(v) for k, v in params.items() if k.startswith(AUX_PREFIX)}
    results = []
    for offset in range(ctx.seeds):
        results.append(fit(RunSpec(seed_config(cfg, offset), storage_path=ctx.storage,
                                   run_name=run_name if ctx.seeds == 1 else f"{run_name}-seed={offset}",
                                   callbacks=[TuneReportCallback()] if ctx.seeds == 1 else [],
                                   mlflow_parent_run_id=ctx.parent_run_id,
                                   tags={rep.TRIAL_TAG: trial_id, rep.SEED_TAG: str(offset), **labels})))
    if ctx.seeds > 1:  # one report for Tune: the mean over seeds (val selects; the test metrics ride along)
        report = {}
        scored = [{**r.metrics, **r.test_metrics} for r in results]
        for name in sorted({k for m in scored for k, v in m.items() if isinstance(v, (int, float))}):
            summary = summarize(m.get(name, float("nan")) for m in scored)
            report.update({name: summary.mean, f"{name}/ci95": summary.ci95, f"{name}/seeds": summary.n})
        tune.report(report)


def _new_context(spec: SweepSpec, cfg: ExperimentConfig, path: Path, num_samples: int, seeds: int,
                 experiment: Path | str | None = None) -> SweepContext:
    """Open the MLflow parent run and save the context a later --resume reads (in the Tune `experiment` folder,
    default the local sweep folder `path`)."""
    experiment = experiment or path
    swept = tuple(space_keys(spec.space, cfg))
    parent = None
    if cfg.tracking.enabled:
        shown = [list(m) for m in spec.metrics + spec.report_metrics]
        tags = {rep.ROLE_TAG: "parent", rep.SWEPT_TAG: json.dumps(list(swept)), rep.METRICS_TAG: json.dumps(shown),
                "spklip.sweep.name": spec.name, "spklip.sweep.folder": path.name}
        params = {f"sweep.{k}": v for k, v in {"num_samples": num_samples, "scheduler": spec.scheduler,
                                                "seed": spec.seed, "metric": spec.metrics[0][0], "seeds": seeds}.items()}
        params.update({k: v for k, v in cfg.to_flat_dict().items() if k not in swept})
        parent = start_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.train.run_dir, run_name=path.name,
                           params=params, tags=tags)
    ctx = SweepContext(spec=spec.name, base=cfg, storage=str(storage.join(experiment, "train")),
                       parent_run_id=parent.run_id if parent is not None and parent.enabled else None,
                       metrics=tuple(spec.metrics), table_metrics=tuple(spec.metrics + spec.report_metrics),
                       swept=swept, num_samples=num_samples, seeds=seeds, gaps=tuple(spec.gaps))
    ctx.save(experiment)
    return ctx


class TrialProgress(tune.Callback):
    """One line on stderr per finished trial (on the driver): the objectives, the epochs it ran, its parameters."""

    def __init__(self, metrics: Metrics, num_samples: int):
        self.metrics, self.num_samples, self.finished = metrics, num_samples, 0

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial, "failed")

    def _line(self, trial, status: str) -> None:
        self.finished += 1
        print(trial_line(self.finished, self.num_samples, trial.trial_id, status, trial.last_result or {},
                         self.metrics, trial.config or {}), file=sys.stderr, flush=True)


def trial_line(n: int, total: int, trial_id: str, status: str, result: dict[str, Any], metrics: Metrics,
               params: dict[str, Any]) -> str:
    """``trial 3/8 a1b2c3 done: val/top1 0.412 after 48 steps (4 epochs)  model.hsfe.num_subblocks=3``; with several
    seeds the metric is their mean, with its 95 % interval (``val/top1 0.943 ± 0.245 over 2 seeds``)."""
    scores = []
    for m, _ in metrics:
        value, ci = result.get(m), result.get(f"{m}/ci95")
        if isinstance(value, (int, float)) and abs(value) >= sys.float_info.max:
            scores.append(f"{m} not evaluated yet")  # a mid-epoch checkpoint's report (spklip.runtime.worker)
        elif isinstance(value, (int, float)):
            scores.append(f"{m} {value:.3f}" + (f" ± {ci:.3f}" if isinstance(ci, float) and ci == ci else ""))
    text = f"trial {n}/{total} {trial_id} {status}" + (f": {', '.join(scores)}" if scores else "")
    seeds = result.get(f"{metrics[0][0]}/seeds") if metrics else None
    if isinstance(seeds, (int, float)) and seeds > 1:
        text += f" over {int(seeds)} seeds"
    step, epoch, iters = result.get("step"), result.get("epoch"), result.get("training_iteration")
    if status == "done" and isinstance(step, (int, float)) and step:
        text += f" after {int(step)} steps" + (f" ({int(epoch)} epochs)" if isinstance(epoch, (int, float)) else "")
    elif status == "done" and iters:  # a result without the worker's step count
        text += f" after {iters} epoch{'s' if iters != 1 else ''}"
    shown = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())]
    return text + ("  " + " ".join(shown) if shown else "")


def _tuner(spec: SweepSpec, ctx: SweepContext, path: Path | str, resume: bool, points: Sequence[dict[str, Any]],
           max_concurrent: int | None, verbose: bool = True) -> tune.Tuner:
    """The Tuner of the Tune experiment `path` (a folder or a URI), new or restored."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(ctx.base))
    where = ray_storage(str(path))  # a URI: the path on its filesystem and the filesystem
    if resume:
        return tune.Tuner.restore(where["storage_path"], trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=where.get("storage_filesystem"))
    name, parent = posixpath.basename(where["storage_path"]), posixpath.dirname(where["storage_path"])
    single = len(ctx.metrics) == 1
    metric, mode = ctx.metrics[0]
    # max_t one past the last epoch: a trial that trains all its epochs ends by itself (and closes its MLflow run)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=ctx.base.train.epochs + 1, grace_period=1,
                              reduction_factor=2) if single and spec.scheduler == "asha" else FIFOScheduler()
    searcher = build_searcher(spec.space, ctx.base, ctx.metrics, spec.seed,
                              max_concurrent or max_concurrent_trials(ctx.base), points)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=ctx.num_samples,
                                    **({"metric": metric, "mode": mode} if single else {})),
        run_config=tune.RunConfig(name=name, storage_path=parent, storage_filesystem=where.get("storage_filesystem"),
                                  failure_config=tune.FailureConfig(max_failures=0),  # a code error repeats
                                  callbacks=[TrialProgress(ctx.metrics, ctx.num_samples)],
                                  verbose=None if verbose else 0))  # 0: no trial table every few seconds


def run_sweep(spec: SweepSpec, cfg: ExperimentConfig, *, num_samples: int | None = None, smoke: bool = False,
              resume: bool = False, name: str | None = None, points: Sequence[dict[str, Any]] = (), seeds: int = 1,
              max_concurrent: int | None = None, verbose: bool = True, storage_root: str | None = None) -> SweepRun:
    """Run (or resume) a sweep and report it on its MLflow parent run.

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
        verbose: False: Ray's, Tune's and MLflow's logs go only to ``<sweep folder>/spklip.log`` (the workers' to
            Ray's session logs) and stderr gets one line per finished trial (`spklip.runtime.logs.RunOutput`).
        storage_root: where the Tune experiment goes, ``<storage_root>/<name>`` (e.g. ``s3://bucket/sweeps``; the
            default is the local sweep folder). A resume must name the same root.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not resume:
        check_space_keys(spec.space, cfg)  # a misspelled key: one error now, not every trial skipped after Ray starts
    if name is not None:
        check_name(name)  # one folder name under <run_dir>/sweeps: before anything is made or started
    root = sweep_root(cfg)
    remote = storage.absolute(storage_root) if storage_root else None  # the Tune experiment's root, if not `root`
    if remote and not resume:
        check_local_storage(cfg, remote)  # before Ray: every trial would refuse it
    if resume:
        found = (storage.join(remote or root, name) if name else latest_sweep(remote or root, spec.name))
        path = root / posixpath.basename(str(found).rstrip("/"))
    else:
        cfg = resolve_paths(cfg)
        private_dir(cfg.train.run_dir)  # the MLflow store, checkpoints and spool are the user's alone
        if cfg.tracking.experiment == "spklip":  # the default: name the experiment after the sweep
            cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, experiment=spec.name))
        path = root / (name or f"{spec.name}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
    experiment = storage.join(remote, path.name) if remote else path  # the Tune experiment: state, trials, SWEEP_FILE
    if not resume or storage.exists(storage.join(experiment, SWEEP_FILE)):  # (a sweep not found: said below)
        lock_folder(path, f"sweep {path.name}")  # until this driver exits: a second driver of the sweep stops here
    if not resume and storage.exists(storage.join(experiment, SWEEP_FILE)):
        raise FileExistsError(f"sweep {experiment} exists; pass --resume to continue it or another --name")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    with private_files(), RunOutput(verbose) as output:  # files 0600/0700; the table finish_sweep prints: stdout
        output.attach(path)
        if resume:
            ctx = SweepContext.load(experiment)
        else:
            ctx = _new_context(spec, cfg, path, num_samples or (spec.smoke_samples if smoke else spec.num_samples),
                               seeds, experiment)
        started = not ray.is_initialized()
        ensure_ray(ctx.base.scale.address, verbose=verbose, temp_parent=path)  # Ray's session folder: inside
        output.ray_logs = ray_logs_dir()
        results = _tuner(spec, ctx, experiment, resume, points, max_concurrent, verbose).fit()
        if started:  # the report needs only MLflow; Ray's late messages (the raylet's worker-count warning after
            ray.shutdown()  # the last trial) reach the log, not the terminal after the table
    return finish_sweep(ctx, path, results)


def finish_sweep(ctx: SweepContext, path: Path, results) -> SweepRun:
    """Close early-stopped trial runs; write the comparison table, plots, gaps and best config onto the parent."""
    run = SweepRun(path.name, path, ctx.parent_run_id, ctx.tracking_uri)
    errors = [r.error for r in results if r.error is not None]
    run.failed = len(errors)
    if not ctx.parent_run_id:
        run.table_markdown = rep.tune_table(results, ctx.metrics)
        print(run.table_markdown)
        return run
    uri, experiment = ctx.tracking_uri, ctx.base.tracking.experiment
    errored = {trial_run_name(r.metrics.get("trial_id")) for r in results if r.error is not None}
    rep.close_stopped_children(uri, experiment, ctx.parent_run_id, errored)
    table = rep.sweep_table(experiment, uri=uri, parent_run_id=ctx.parent_run_id, metrics=list(ctx.table_metrics))
    gap_metrics = rep.add_gaps(table, ctx.gaps)
    if errors:
        table.notes.append(f"{len(errors)} trial(s) failed; first error: {str(errors[0]).splitlines()[0][:300]}")
    files = rep.write_report(table, path / "report", uri)
    parent = Tracker(uri, ctx.parent_run_id, spool_dir=path / SPOOL_DIR)
    for f in files.values():
        parent.log_artifact(f, "sweep_report")
    best = table.frame.iloc[0] if table.best_run_id else None
    if best is not None:
        parent.log_metrics({f"best/{m}": float(best[m]) for m, _ in table.metrics}, 0)
        parent.set_tags({"spklip.sweep.best_run": table.best_run_id})
        _register_best(ctx, path, parent, table.best_run_id)
    if gap_metrics:
        parent.log_metrics(gap_metrics, 0)
    parent.terminate("FAILED" if errors and best is None else "FINISHED")
    run.table_markdown, run.report_dir, run.best_run_id = table.to_markdown(), path / "report", table.best_run_id
    print(run.table_markdown)
    print(f"\nReport: {path / 'report'} (also on MLflow run {ctx.parent_run_id} in experiment {experiment!r})")
    print(f"In the MLflow UI: {ui_link(uri, experiment)}")
    return run


def ui_link(uri: str, experiment: str) -> str:
    """Where the sweep's runs table is in the MLflow UI. MLflow 3.17 opens an experiment on its GenAI overview
    unless the URL asks for the model-training view (``workflowType=machine_learning``; the experiment-kind tag
    spklip sets is not read for that)."""
    exp = rep.mlflow_client(uri).get_experiment_by_name(experiment)
    page = f"#/experiments/{exp.experiment_id}?workflowType=machine_learning" if exp is not None else ""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"make mlflow-ui, then http://127.0.0.1:5056/{page}"


def _register_best(ctx: SweepContext, path: Path, parent: Tracker, best_run_id: str) -> None:
    """Log the best trial's model from its best checkpoint and register it (``models:/NAME@best``), NAME being
    ``tracking.register_as`` or the sweep's name. Trials log no model (``tracking.log_model: False`` in the sweep
    specs): only the winner's is worth the time and space, and it is known only now; its checkpoint is still on
    disk (the Ray storage keeps each trial's best)."""
    best = Tracker(ctx.tracking_uri, best_run_id, spool_dir=path / SPOOL_DIR)
    run = best.call(best.client.get_run, best_run_id)
    checkpoint = run.data.tags.get("best_checkpoint") if run is not None else None
    if not checkpoint or checkpoint == "None" or not storage.exists(checkpoint):
        print(f"spklip: the best trial's checkpoint ({checkpoint}) is gone; no model registered", file=sys.stderr)
        return
    name = ctx.base.tracking.register_as or ctx.spec
    log_encoder(best, checkpoint, register_as=name)
    if best.enabled and not best.offline:
        parent.set_tags({"spklip.sweep.registered_model": f"models:/{name}@{BEST_ALIAS}"})
        print(f"Best model: models:/{name}@{BEST_ALIAS} (run {best_run_id})")


def run_from_args(spec: SweepSpec, args: argparse.Namespace) -> int:
    """Load the config, make sure smoke-test data exists, run the sweep; returns an exit code."""
    if args.name is not None:
        check_name(args.name)  # before the smoke data is built
    if args.scheduler:
        spec = dataclasses.replace(spec, scheduler=args.scheduler)
    cfg = sweep_config(spec, args.config, args.overrides, smoke=args.smoke_test)
    if not args.resume:
        check_space_keys(spec.space, cfg)  # before the smoke data is built and before Ray starts
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError("--num-samples must be >= 1")
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    if args.seeds > 1 and args.resume:
        raise ConfigError("--seeds starts a sweep; a resumed sweep keeps the seeds it was started with")
    points = []
    if args.first:
        if args.resume:
            raise ConfigError("--first starts a sweep; a resumed sweep keeps the trials it was started with")
        points = first_points(spec, cfg, *parse_first(args.first))
        if args.num_samples is not None and args.num_samples < len(points):
            raise ConfigError(f"--num-samples {args.num_samples} is fewer than the {len(points)} --first trials")
    if args.smoke_test and not args.resume:  # data.path if it holds shards, else the smoke set (built once)
        data = ensure_smoke_data(cfg.data.path, cfg.train.run_dir, cfg.model_preset)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    run = run_sweep(spec, cfg, num_samples=args.num_samples or (len(points) or None), smoke=args.smoke_test,
                    resume=args.resume, name=args.name, points=points, seeds=args.seeds,
                    max_concurrent=args.max_concurrent, verbose=args.verbose, storage_root=args.storage)
    if run.failed:  # a study that lost trials must not look complete to a script that chains it
        print(f"spklip: {run.failed} trial(s) failed (their errors are above and in the report's notes); the report "
              "covers the rest: exit 1", file=sys.stderr)
        return 1
    return 0


def main(spec: SweepSpec, argv: list[str] | None = None) -> int:
    """Entry point of a sweep script: ``raise SystemExit(main(SPEC))``."""
    parser = argparse.ArgumentParser(prog=f"sweeps/{spec.name}", description=spec.description or spec.name)
    add_sweep_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(spec, args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
