"""The one entry point for a training run: `fit(RunSpec) -> FitResult` plans the run (`spklip.runtime.plan`),
starts Ray, builds and fits a Ray Train `TorchTrainer` whose workers get one typed `WorkerPlan` (local mode,
``scale.num_workers=0``: no Ray, the loop in this process gets it, `spklip.runtime.worker.train_local`), scores
the best and the last checkpoint on the test split, logs the best checkpoint's encoder as an MLflow model, and
closes the MLflow run (`spklip.runtime.mlflow_run.run_closed`: FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED
otherwise). A sweep's trials call the same `fit`. Re-running with the same ``run_name`` and ``storage_path``
resumes from the latest checkpoint (same MLflow run). Ctrl-C while Ray Train runs is a ``KeyboardInterrupt`` here
(`SpklipTrainer`).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray
import ray.train
from ray.train.torch import TorchTrainer

from spklip.runtime import reader
from spklip.runtime.epoch_eval import log_report_artifacts
from spklip.runtime.mlflow_run import parent_run_id, run_closed
from spklip.runtime.model_log import log_encoder
from spklip.runtime.plan import RunPlan, RunSpec, check_resources, local_run_folder, prepare_run, worker_resources
from spklip.runtime.rayenv import checkpoint_uri, ensure_ray, ray_logs_dir, ray_storage
from spklip.runtime.torch_store import LoopbackTorchConfig
from spklip.runtime.worker import (FailFastOnDataError, WorkerPlan, fail_fast_error_in, train_fn_per_worker,
                                   train_local)
from spklip.train.faults import FAULT_ENV_PREFIX
from spklip.train.final_eval import BEST, FINAL, evaluate_on_test

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass
class FitResult:
    """Outcome of `fit`: final metrics (last epoch's evaluation), checkpoints and the MLflow run."""

    metrics: dict[str, float]  # the last report's (the last epoch's evaluation)
    checkpoint: str | None  # latest checkpoint folder
    best_checkpoint: str | None  # best by train.metric
    run_name: str
    storage_path: str
    mlflow_run_id: str | None
    model_uri: str | None = None
    seconds: float = 0.0
    best_metrics: dict[str, float] = field(default_factory=dict)  # the metrics best_checkpoint was scored with
    # the result: the best-on-val and the last checkpoint scored on the test split (``test/...``, ``test_final/...``,
    # with ``chance/...`` and ``clips/...``; `spklip.train.final_eval`)
    test_metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the evaluation left out and why


def worker_plan(plan: RunPlan) -> WorkerPlan:
    """The typed plan every worker (or the local-mode loop) gets, decided once here."""
    cfg = plan.cfg
    return WorkerPlan(cfg=cfg, total_steps=plan.total_steps, dataset=plan.dataset, tracking_uri=plan.tracker.uri,
                      mlflow_run_id=plan.tracker.run_id if plan.tracker.enabled else None,
                      run_dir=str(local_run_folder(cfg, plan.storage_path, plan.run_name)), timeline=plan.timeline)


def build_trainer(plan: RunPlan, callbacks: Sequence[Any] = ()) -> TorchTrainer:
    """A ready-to-fit ``TorchTrainer`` for a `RunPlan` with Ray Train workers (Ray must be running: `ensure_ray`).

    Args:
        plan: from `prepare_run` (the config with absolute paths, the run name and storage, the MLflow run).
        callbacks: Ray Train callbacks, e.g. ``ray.tune.integration.ray_train.TuneReportCallback()``.
    """
    cfg = plan.cfg
    gpu, resources = worker_resources(cfg)
    datasets = {"train": reader.ray_train_dataset(cfg)}
    plan.timeline.mark("dataset")
    # fault-injection switches (spklip.train.faults) reach the workers whatever environment Ray started them with
    env = {**WORKER_ENV, **{k: v for k, v in os.environ.items() if k.startswith(FAULT_ENV_PREFIX)}}
    return SpklipTrainer(
        train_fn_per_worker, train_loop_config={"plan": worker_plan(plan)}, torch_config=LoopbackTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=cfg.scale.placement),
        run_config=ray.train.RunConfig(
            name=plan.run_name, **ray_storage(plan.storage_path), callbacks=[*callbacks, FailFastOnDataError()],
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                         checkpoint_score_attribute=cfg.train.metric,
                                                         checkpoint_score_order=cfg.train.metric_mode),
            worker_runtime_env={"env_vars": env}),
        datasets=datasets)


def fit(spec: RunSpec) -> FitResult:
    """Train ``spec.cfg`` to the end and return its final evaluation metrics and checkpoints (`RunSpec` says what
    each field does: the run's name and storage, its MLflow parent and tags, Ray Train callbacks, the output)."""
    t0, output = time.perf_counter(), spec.output
    # Ray starts after every check (bad input fails before Ray or any worker starts), while the MLflow run opens;
    # local mode (scale.num_workers=0: the loop runs in this process, reading the split itself) starts no Ray at all
    local = spec.cfg.scale.num_workers == 0
    start_ray = None if local else functools.partial(ensure_ray, spec.cfg.scale.address,
                                                     verbose=output.verbose if output else True)
    if local and os.environ.get("RAY_ADDRESS") and not ray.is_initialized():  # e.g. `ray job submit` on a cluster
        print(f"spklip: scale.num_workers=0 (local mode): training in this process; the Ray cluster at RAY_ADDRESS="
              f"{os.environ['RAY_ADDRESS']} is not used (set scale.num_workers to 1 or more to train on it)",
              file=sys.stderr, flush=True)
    plan = prepare_run(spec, start_ray=start_ray)
    with run_closed(plan.tracker):  # from here on, every way out ends the MLflow run (FINISHED, KILLED, FAILED)
        if output is not None:
            output.attach(local_run_folder(plan.cfg, plan.storage_path, plan.run_name), follow=True)
            output.ray_logs = ray_logs_dir()
        if local:  # the loop here, reading the split itself: no Ray, no Ray Train (`train_local`)
            plan.timeline.mark("dataset")
            result = train_local(worker_plan(plan), spec.callbacks)
        else:
            check_resources(plan.cfg)  # before Ray Train waits on a placement group the cluster cannot hold
            result = _fit_trainer(build_trainer(plan, spec.callbacks))
        out = _finish(plan, result, time.perf_counter() - t0)
        out.best_metrics = _best_metrics(result, out)
    return out


class SpklipTrainer(TorchTrainer):
    """``TorchTrainer`` whose Ctrl-C is a ``KeyboardInterrupt`` in the driver, as everywhere else in spklip.

    Ray Train 2.60 installs its own SIGINT handler while it waits for its controller (`_register_sigint_handler`, an
    internal hook): it aborts the controller, then ends the process with ``sys.exit(0)`` from inside Ray (the
    process then exited 1, with no message and the MLflow run RUNNING). This one asks the controller to abort
    (not waited for: the driver's exit ends its workers anyway) and raises ``KeyboardInterrupt``, which `run_closed`
    turns into a KILLED run and ``spklip`` into ``spklip: interrupted``, exit 130. A second Ctrl-C gets Python's
    own handler."""

    def _register_sigint_handler(self, controller) -> None:
        signal.signal(signal.SIGINT, functools.partial(_interrupt, controller))


def _interrupt(controller, signum: int, frame) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        controller.abort.remote()
    except Exception:  # noqa: BLE001 - the controller is gone already: nothing left to stop
        pass
    raise KeyboardInterrupt


def _fit_trainer(trainer: TorchTrainer):
    """``trainer.fit()``: a deterministic worker error (`fail_fast_error_in`) comes out as its own one line, not
    Ray Train's wrapper; the SIGINT handler in place before (`SpklipTrainer` replaces it) is put back."""
    main = threading.current_thread() is threading.main_thread()  # Ray Train touches no handler elsewhere (Tune)
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    except Exception as e:
        bad = fail_fast_error_in(e)
        if bad is not None:  # a shard that cannot be read, a diverged run: one line naming the file or the step,
            raise bad from None  # not Ray Train's wrapper
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _best_metrics(result, out: FitResult) -> dict[str, float]:
    """The metrics `out.best_checkpoint` was reported with."""
    for checkpoint, metrics in result.best_checkpoints or ():
        if checkpoint_uri(out.storage_path, checkpoint) == out.best_checkpoint:
            return dict(metrics)
    return dict(out.metrics) if out.best_checkpoint and out.best_checkpoint == out.checkpoint else {}


def _finish(plan: RunPlan, result, seconds: float) -> FitResult:
    """Collect checkpoints/metrics, score them on the test split, log the best encoder to MLflow (and register it).
    The run is ended by `fit` (`run_closed`): FINISHED, or FAILED when any of this fails."""
    best = None
    if result.best_checkpoints:
        sign = 1 if plan.cfg.train.metric_mode == "max" else -1
        best = max(result.best_checkpoints, key=lambda cm: sign * cm[1].get(plan.cfg.train.metric, float("-inf")))[0]
    elif result.checkpoint is not None:  # nothing ranked: the last checkpoint is the evaluated end state
        best = result.checkpoint
    out = FitResult(metrics=dict(result.metrics or {}),
                    checkpoint=checkpoint_uri(plan.storage_path, result.checkpoint),
                    best_checkpoint=checkpoint_uri(plan.storage_path, best), run_name=plan.run_name,
                    storage_path=plan.storage_path, mlflow_run_id=plan.tracker.run_id if plan.tracker.enabled
                    else None, seconds=seconds)
    _test(plan, out)
    tracking = plan.cfg.tracking
    in_sweep = bool(parent_run_id(plan.storage_path, plan.run_name))  # a sweep registers its best trial only
    register_as = tracking.register_as if not in_sweep else ""
    if plan.tracker.enabled and (tracking.log_model or register_as) and out.best_checkpoint:
        out.model_uri = log_encoder(plan.tracker, out.best_checkpoint, register_as=register_as)
    if plan.tracker.enabled:
        plan.tracker.log_metrics({"fit/seconds": seconds}, int(out.metrics.get("step", 0)))
        plan.tracker.set_tags({"best_checkpoint": str(out.best_checkpoint)})
    return out


def _test(plan: RunPlan, out: FitResult) -> None:
    """Score the best-on-val and the last checkpoint on the test split; log the metrics (at the last step) and the
    tables (``test/best``, ``test/final``), and print one line on stderr."""
    report = evaluate_on_test(plan.cfg, plan.dataset, out.best_checkpoint, out.checkpoint)
    out.test_metrics, out.notes = report.metrics, report.notes
    step = int(out.metrics.get("step", 0))
    if plan.tracker.enabled and report.metrics:
        plan.tracker.log_metrics(report.metrics, step)
        for prefix, folder in ((BEST, "test/best"), (FINAL, "test/final")):
            if prefix in report.reports:
                log_report_artifacts(plan.tracker, report.reports[prefix], folder)
    print(f"spklip: {report.line(plan.cfg)}", file=sys.stderr, flush=True)
