"""Planning a run on the driver (`prepare_run`: `RunSpec` -> `RunPlan`): every check that can fail before a worker
starts, so Ray Train neither retries it ``scale.max_failures`` times nor waits for ever (`check_before_workers`,
`check_resources`); the step count; the run's folders (``storage_path`` may be an ``s3://`` URI: what is appended
while the run trains stays in a local folder, `local_run_folder`) and its MLflow run; a run to resume (`resume_target`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import ray

from spklip.config import ExperimentConfig
from spklip.data import storage
from spklip.data.read import DatasetFacts, dataset_info
from spklip.model import Spklip
from spklip.outdir import private_dir
from spklip.runtime import reader
from spklip.runtime.logs import RunOutput
from spklip.runtime.mlflow_run import RUN_FILE, end_run, open_run
from spklip.runtime.rayenv import cluster_capacity, resource_shortfall
from spklip.runtime.tracking import Tracker, resolve_uri
from spklip.runtime.worker import ModelError, ray_resume_checkpoint
from spklip.train.checkpoint import load_model_weights, read_checkpoint
from spklip.train.ownership import check_name, lock_folder
from spklip.train.timing import Timeline

CONFIG_FILE = "spklip_config.json"  # inside {storage_path}/{run_name}: the run's flat config (`spklip train --resume`)


class ResourceError(ValueError):
    """The worker group asks for more than the Ray cluster can ever give (`check_resources`)."""


@dataclass(frozen=True)
class RunSpec:
    """One training run as its caller asks for it (`spklip train`, a sweep's trial, a test): `launcher.fit(spec)`."""

    cfg: ExperimentConfig
    run_name: str | None = None  # default: tracking.run_name, else <preset>-<date>-<time>; the same name resumes
    storage_path: str | None = None  # Ray's storage (default <train.run_dir>/ray; an s3:// URI too)
    mlflow_parent_run_id: str | None = None  # a sweep's parent run: this run is its child
    tags: dict[str, str] | None = None  # added to a new MLflow run (a sweep's trial id, seed, labels)
    callbacks: Sequence[Any] = ()  # Ray Train callbacks (a one-seed sweep trial's TuneReportCallback)
    output: RunOutput | None = None  # ``spklip train``: the run log, rank 0's lines on stderr, Ray verbose or not
    timeline: Timeline | None = None  # the command's start-up milestones so far (default: count from now)


@dataclass
class RunPlan:
    """What the driver decided before starting workers."""

    cfg: ExperimentConfig  # with absolute paths
    run_name: str
    storage_path: str
    dataset: DatasetFacts
    total_steps: int
    tracker: Tracker
    timeline: Timeline = field(default_factory=Timeline)  # start-up milestones, continued by the workers


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Absolute ``data.path`` and ``train.run_dir`` and an explicit ``tracking.uri``, so processes in other folders
    (Ray workers, Tune trials, a resumed run) mean the same files and the same MLflow store."""
    run_dir = Path(cfg.train.run_dir).resolve()
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, path=storage.absolute(cfg.data.path)),
        train=dataclasses.replace(cfg.train, run_dir=str(run_dir)),
        tracking=dataclasses.replace(cfg.tracking, uri=resolve_uri(cfg.tracking.uri, run_dir)))


def local_run_folder(cfg: ExperimentConfig, storage_path: str, run_name: str) -> Path:
    """Where a run's logs, progress lines and tracking spool live: ``{storage_path}/{run_name}`` for local storage;
    for an object store (no appends there) its mirror under ``train.run_dir``:
    ``<run_dir>/s3/<bucket>/<prefix>/<run name>``."""
    if not storage.is_uri(storage_path):
        return Path(storage_path) / run_name
    scheme, _, rest = storage_path.partition("://")
    return Path(cfg.train.run_dir).joinpath(scheme, *rest.strip("/").split("/"), run_name)


def prepare_run(spec: RunSpec, start_ray: Callable[..., None] | None = None) -> RunPlan:
    """Validate data and config, plan steps, lock the run folder (`spklip.train.ownership`: one driver per run, held
    until this process exits), open (or reopen) the MLflow run. Raises before any worker starts.

    `start_ray` (`fit`): called as ``start_ray(temp_parent=<run folder>)`` once every check has passed, while the
    MLflow run is being opened (both take seconds; Ray's start runs in its own processes)."""
    cfg, run_name, storage_path, timeline = spec.cfg, spec.run_name, spec.storage_path, spec.timeline or Timeline()
    if run_name is not None or cfg.tracking.run_name:
        check_name(run_name if run_name is not None else cfg.tracking.run_name,
                   "--name" if run_name is not None else "tracking.run_name")
    cfg = resolve_paths(cfg)
    dataset = dataset_info(cfg)
    timeline.mark("validate")
    spe = reader.steps_per_epoch(dataset.split_rows[cfg.data.train_split], cfg, max(1, cfg.scale.num_workers))
    total = spe * cfg.train.epochs
    total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model_preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = storage.absolute(storage_path or Path(cfg.train.run_dir) / "ray")
    check_local_storage(cfg, storage_path)
    private_dir(cfg.train.run_dir)  # every check passed: the MLflow store, checkpoints and spool, the user's alone
    run_folder = local_run_folder(cfg, storage_path, run_name)
    lock_folder(run_folder, f"run {run_name}")  # until this driver exits: a second driver of the run stops here
    check_before_workers(cfg, storage_path, run_name)  # a model that cannot be built, a resume that cannot be read
    config_file = storage.join(storage_path, run_name, CONFIG_FILE)
    if not storage.exists(config_file):  # the first attempt's config is what a --resume trains
        storage.write_text(config_file, json.dumps(cfg.to_flat_dict(), indent=1))
    with ThreadPoolExecutor(1, thread_name_prefix="spklip-mlflow-run") as pool:
        opening = pool.submit(open_run, cfg, run_name, run_folder, dataset, spec.mlflow_parent_run_id, spec.tags,
                              saved=storage.join(storage_path, run_name, RUN_FILE))
        try:
            if start_ray is not None:
                start_ray(temp_parent=run_folder)  # an in-process Ray's session folder goes inside the run folder
                timeline.mark("ray_init")
        except BaseException as e:  # Ray did not start, Ctrl-C: the run being opened is closed, not left RUNNING
            _close_opening(opening, e)
            raise
        tracker = opening.result()
    timeline.mark("mlflow_run")  # after ray_init when both ran: what was left to wait for
    return RunPlan(cfg, run_name, storage_path, dataset, total, tracker, timeline)


def check_local_storage(cfg: ExperimentConfig, storage_path: str) -> None:
    """Refuse an object store as the storage of a local-mode run or sweep (``scale.num_workers=0``): local mode writes
    its checkpoints itself, to a local folder."""
    if cfg.scale.num_workers == 0 and storage.is_uri(storage_path):
        raise ValueError(f"--storage {storage_path}: local mode (scale.num_workers=0) keeps checkpoints in a local "
                         f"folder; add --set scale.num_workers=1 to keep them in an object store")


def _close_opening(opening: Future, error: BaseException) -> None:
    """End the MLflow run `opening` opens (once it has) as `error` ends it (`end_run`); nothing when it failed."""
    try:
        tracker = opening.result()
    except BaseException:  # noqa: BLE001 - `error` is the one reported
        return
    end_run(tracker, error)


def check_before_workers(cfg: ExperimentConfig, storage_path: str, run_name: str) -> None:
    """Raise, once, here, what every Ray Train worker would raise in turn, ``scale.max_failures`` + 1 times (Ray
    Train retries every worker error): the model cannot be built from the config (`ModelError`: a missing
    ``model.text.pretrained`` folder, ...), and the checkpoint a resumed run continues from cannot be read (a
    corrupted, truncated or foreign ``state.pt``) or does not fit the model (`CheckpointError`, naming the file).
    Local mode (``scale.num_workers=0``) runs the loop in this process: its own errors are raised once already.
    Workers still check for themselves (`spklip.runtime.worker.FAIL_FAST`): a folder may exist here and not on their
    node."""
    if cfg.scale.num_workers == 0:
        return
    try:
        model = Spklip(cfg.model, cfg.loss)  # on the CPU; built again by each worker
    except ValueError as e:
        raise ModelError(str(e)) from None
    resume = ray_resume_checkpoint(storage.join(storage_path, run_name))
    if resume is not None:
        load_model_weights(model, read_checkpoint(resume)["model"], source=resume)


def worker_resources(cfg: ExperimentConfig) -> tuple[bool, dict[str, float]]:
    """``(use_gpu, resources per worker)`` of the run's Ray Train workers (Ray must be running)."""
    gpu = _use_gpu(cfg)
    return gpu, {"CPU": cfg.scale.cpus_per_worker, **({"GPU": cfg.scale.gpus_per_worker} if gpu else {})}


def check_resources(cfg: ExperimentConfig) -> None:
    """Refuse, in one line (`ResourceError`), a worker group the cluster can never hold, rather than wait for ever
    on its placement group (`spklip.runtime.rayenv.cluster_capacity`: exact without an autoscaler, the in-process Ray
    included; against the autoscaler's maximum with one). Local mode asks Ray for nothing."""
    if cfg.scale.num_workers == 0:
        return
    _, per_worker = worker_resources(cfg)
    capacity = cluster_capacity()
    why = resource_shortfall(per_worker, cfg.scale.num_workers, capacity)
    if why is not None:
        where = cfg.scale.address or os.environ.get("RAY_ADDRESS", "") or "in-process Ray"
        raise ResourceError(f"scale asks for {why} ({where}): lower scale.num_workers or scale.cpus_per_worker"
                            + (", or set scale.use_gpu=false" if "GPU" in why else ""))


def _use_gpu(cfg: ExperimentConfig) -> bool:
    if cfg.scale.use_gpu != "auto":
        return bool(cfg.scale.use_gpu)
    return ray.cluster_resources().get("GPU", 0) > 0


def resume_target(name_or_dir: str, storage_path: str | None, run_dir: str) -> tuple[ExperimentConfig, str, str]:
    """``(config, run_name, storage_path)`` of an earlier run to continue: `name_or_dir` is its folder, or its name
    under `storage_path` (default ``<run_dir>/ray``; either may be an ``s3://`` URI). The config is the one the run
    started with."""
    folder = str(name_or_dir).rstrip("/")
    if not storage.exists(storage.join(folder, CONFIG_FILE)):
        folder = str(storage.join(storage_path or Path(run_dir) / "ray", name_or_dir))
    config_file = storage.join(folder, CONFIG_FILE)
    if not storage.exists(config_file):
        raise FileNotFoundError(f"--resume {name_or_dir}: no spklip run there ({config_file} does not exist)")
    try:
        cfg = ExperimentConfig.from_flat_dict(json.loads(storage.read_text(config_file)))
    except ValueError as e:
        raise ValueError(f"{config_file}: not a spklip run config ({e})") from None
    parent, _, name = folder.rpartition("/")
    return cfg, name, storage.absolute(parent)
