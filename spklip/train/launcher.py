"""Launcher: validate on the driver, create the MLflow run, build and fit a Ray Train `TorchTrainer`.

Public API (also used by the sweep layer, spklip/tune):
  * `prepare_run(cfg, ...) -> RunPlan`: every check that can fail before a worker starts, the planned step count,
    the Ray storage folder and the MLflow run (a child run when ``mlflow_parent_run_id`` is given).
  * `build_trainer(cfg, *, run_name, storage_path, callbacks, mlflow_parent_run_id, plan) -> TorchTrainer`.
  * `fit(cfg, ...) -> FitResult`: build, fit, log the best checkpoint's encoder as an MLflow model, close the run.
Re-running with the same ``run_name`` and ``storage_path`` resumes from the latest checkpoint (same MLflow run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from spklip.config import ExperimentConfig, apply_overrides
from spklip.train import data as train_data
from spklip.tracking import Tracker, git_commit, resolve_uri, start_run

RUN_FILE = "spklip_run.json"  # inside {storage_path}/{run_name}: the MLflow run a resumed job keeps logging to
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}


@dataclass
class RunPlan:
    """What the driver decided before starting workers."""

    cfg: ExperimentConfig  # with absolute paths
    run_name: str
    storage_path: str
    dataset: dict[str, Any]
    total_steps: int
    tracker: Tracker
    fail_at_step: dict[str, Any] | None = None  # tests only: kill rank 0 once at this step


@dataclass
class FitResult:
    """Outcome of `fit`: final metrics (last epoch's evaluation), checkpoints and the MLflow run."""

    metrics: dict[str, float]
    checkpoint: str | None  # latest checkpoint folder
    best_checkpoint: str | None  # best by train.metric
    run_name: str
    storage_path: str
    mlflow_run_id: str | None
    model_uri: str | None = None
    seconds: float = 0.0


def ensure_ray(address: str = "") -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` when given, else start an in-process Ray (no-op if running)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", configure_logging=False)


def _absolute(cfg: ExperimentConfig) -> ExperimentConfig:
    return apply_overrides(cfg, {"data.path": str(Path(cfg.data.path).resolve()),
                                 "train.run_dir": str(Path(cfg.train.run_dir).resolve())})


def _world(cfg: ExperimentConfig) -> int:
    return max(1, cfg.scale.num_workers)


def _mlflow_run(cfg: ExperimentConfig, run_name: str, run_folder: Path, dataset: dict[str, Any],
                parent_run_id: str | None, extra_tags: dict[str, str] | None = None) -> Tracker:
    """Reuse the MLflow run of an earlier attempt of this Ray run (resume), else start a new one."""
    uri = resolve_uri(cfg.tracking.uri, cfg.train.run_dir)
    if not cfg.tracking.enabled:
        return Tracker(uri, None)
    saved = run_folder / RUN_FILE
    if saved.exists():
        return Tracker(uri, json.loads(saved.read_text())["mlflow_run_id"])
    tags = {"git_commit": git_commit(), "dataset_fingerprint": dataset["fingerprint"], "model_arch": cfg.model.arch,
            "model_preset": cfg.model_preset, "ray_run_name": run_name, **(extra_tags or {})}
    tracker = start_run(uri, cfg.tracking.experiment, cfg.train.run_dir, run_name=run_name,
                        params=cfg.to_flat_dict(), tags=tags, parent_run_id=parent_run_id)
    if tracker.enabled:
        import yaml
        from spklip.config import to_dict
        tracker.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config/resolved.yaml")
        run_folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": uri}))
    return tracker


def prepare_run(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
                mlflow_parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> RunPlan:
    """Validate data and config, plan steps, open (or reopen) the MLflow run. Raises before any worker starts."""
    cfg = _absolute(cfg)
    dataset = train_data.dataset_info(cfg)
    spe = train_data.steps_per_epoch(dataset["split_rows"][cfg.data.train_split], cfg, _world(cfg))
    total = spe * cfg.train.epochs
    total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model_preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = str(Path(storage_path or Path(cfg.train.run_dir) / "ray").resolve())
    tracker = _mlflow_run(cfg, run_name, Path(storage_path) / run_name, dataset, mlflow_parent_run_id, tags)
    return RunPlan(cfg, run_name, storage_path, dataset, total, tracker)


def _use_gpu(cfg: ExperimentConfig) -> bool:
    if cfg.scale.use_gpu != "auto":
        return bool(cfg.scale.use_gpu)
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


def build_trainer(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
                  callbacks: Sequence[Any] = (), mlflow_parent_run_id: str | None = None,
                  plan: RunPlan | None = None):
    """A ready-to-fit ``TorchTrainer`` for `cfg` (see the module docstring); Ray is started if needed.

    Args:
        cfg: The experiment config.
        run_name: Ray run name (folder under `storage_path`); the same name resumes that run.
        storage_path: Ray storage root (default ``<train.run_dir>/ray``; shared storage on multi-node clusters).
        callbacks: Ray Train callbacks, e.g. ``ray.tune.integration.ray_train.TuneReportCallback()``.
        mlflow_parent_run_id: Makes this run an MLflow child run (sweeps).
        plan: A `RunPlan` from `prepare_run` (built here when None).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from spklip.train.worker import train_fn_per_worker

    plan = plan or prepare_run(cfg, run_name=run_name, storage_path=storage_path,
                               mlflow_parent_run_id=mlflow_parent_run_id)
    ensure_ray(cfg.scale.address)
    cfg = plan.cfg
    gpu = _use_gpu(cfg)
    resources = {"CPU": cfg.scale.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    loop_config = {"cfg": cfg.to_flat_dict(), "total_steps": plan.total_steps, "dataset": plan.dataset,
                   "tracking_uri": plan.tracker.uri, "mlflow_run_id": plan.tracker.run_id if plan.tracker.enabled
                   else None, "fail_at_step": plan.fail_at_step,
                   "local_run_dir": str(Path(plan.storage_path) / plan.run_name) if cfg.scale.num_workers == 0 else None}
    return TorchTrainer(
        train_fn_per_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=plan.run_name, storage_path=plan.storage_path, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                         checkpoint_score_attribute=cfg.train.metric,
                                                         checkpoint_score_order=cfg.train.metric_mode),
            worker_runtime_env={"env_vars": WORKER_ENV}),
        datasets={"train": train_data.ray_train_dataset(cfg)})


def fit(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
        callbacks: Sequence[Any] = (), mlflow_parent_run_id: str | None = None,
        fail_at_step: int | None = None, tags: dict[str, str] | None = None) -> FitResult:
    """Train `cfg` to the end and return its final evaluation metrics and checkpoints.

    ``tags`` are added to a new MLflow run (sweeps: trial id, seed, the trial's labels).
    ``fail_at_step`` is fault injection for tests: rank 0 kills its own process once at that step.
    """
    t0 = time.perf_counter()
    plan = prepare_run(cfg, run_name=run_name, storage_path=storage_path, mlflow_parent_run_id=mlflow_parent_run_id,
                       tags=tags)
    ensure_ray(cfg.scale.address)  # after every check: bad input fails before Ray or any worker starts
    if fail_at_step:
        marker = Path(plan.storage_path) / plan.run_name / f".fail_at_step_{fail_at_step}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        plan.fail_at_step = {"step": fail_at_step, "marker": str(marker)}
    trainer = build_trainer(plan.cfg, callbacks=callbacks, plan=plan)
    try:
        result = trainer.fit()
    except BaseException:
        plan.tracker.terminate("FAILED")
        raise
    return _finish(plan, result, time.perf_counter() - t0)


def _finish(plan: RunPlan, result, seconds: float) -> FitResult:
    """Collect checkpoints/metrics, log the best encoder to MLflow, close the run."""
    best = None
    if result.best_checkpoints:
        sign = 1 if plan.cfg.train.metric_mode == "max" else -1
        best = max(result.best_checkpoints, key=lambda cm: sign * cm[1].get(plan.cfg.train.metric, float("-inf")))[0]
    elif result.checkpoint is not None:  # local mode ranks nothing: its last checkpoint is the evaluated end state
        best = result.checkpoint
    out = FitResult(metrics=dict(result.metrics or {}), checkpoint=result.checkpoint.path if result.checkpoint else None,
                    best_checkpoint=best.path if best else None, run_name=plan.run_name,
                    storage_path=plan.storage_path, mlflow_run_id=plan.tracker.run_id if plan.tracker.enabled
                    else None, seconds=seconds)
    if plan.tracker.enabled and plan.cfg.tracking.log_model and out.best_checkpoint:
        out.model_uri = log_encoder(plan.tracker, out.best_checkpoint)
    if plan.tracker.enabled:
        plan.tracker.log_metrics({"fit/seconds": seconds}, int(out.metrics.get("step", 0)))
        plan.tracker.set_tags({"best_checkpoint": str(out.best_checkpoint)})
    plan.tracker.terminate("FINISHED")
    return out


def log_encoder(tracker: Tracker, checkpoint_dir: str) -> str | None:
    """Rebuild the model from a checkpoint and log its spike encoder as an MLflow PyTorch model."""
    from spklip.train.checkpoint import model_from_checkpoint
    from spklip.train.export import SpikeEncoder, example_input
    from spklip.tracking import log_torch_model

    model, _, _ = model_from_checkpoint(checkpoint_dir)
    return log_torch_model(tracker, SpikeEncoder(model).eval(), example_input(model))


def plan_summary(plan: RunPlan) -> dict[str, Any]:
    """A short dict for the CLI: where the run goes and what it will do."""
    return {"run_name": plan.run_name, "storage": str(Path(plan.storage_path) / plan.run_name),
            "total_steps": plan.total_steps, "tracking": plan.tracker.uri if plan.tracker.enabled else "off",
            "mlflow_run_id": plan.tracker.run_id if plan.tracker.enabled else None,
            "workers": plan.cfg.scale.num_workers, **dataclasses.asdict(plan.cfg.data)}
