"""Launcher: validate on the driver, create the MLflow run, build and fit a Ray Train `TorchTrainer`.

Public API (also used by the sweep layer, spklip/tune):
  * `prepare_run(cfg, ...) -> RunPlan`: every check that can fail before a worker starts, the planned step count,
    the Ray storage folder and the MLflow run (a child run when ``mlflow_parent_run_id`` is given).
  * `build_trainer(plan, callbacks) -> TorchTrainer`: the workers get one typed `WorkerPlan`.
  * `fit(cfg, ...) -> FitResult`: build, fit, log the best checkpoint's encoder as an MLflow model, close the run.
Re-running with the same ``run_name`` and ``storage_path`` resumes from the latest checkpoint (same MLflow run).

Every way out of `fit` once its MLflow run is open ends that run (`run_closed`): FINISHED; KILLED on Ctrl-C or
SIGTERM; FAILED otherwise, tagged `FAILURE_TAG` with the error's one line. Ctrl-C while Ray Train runs is a
``KeyboardInterrupt`` here (`SpklipTrainer`), as anywhere else. What would fail the same way in every worker (a
model that cannot be built, a resumed checkpoint that cannot be read, more CPUs or GPUs than the cluster has) is
checked on the driver first (`check_before_workers`, `check_resources`), so Ray Train neither retries it
``scale.max_failures`` times nor waits for ever.

``storage_path`` may be an ``s3://`` URI (`spklip.data.storage`): Ray's storage (checkpoints, results) and the small
files a resume reads (`CONFIG_FILE`, `RUN_FILE`) go to the bucket; what is appended while the run trains (spklip.log,
progress.log, the tracking spool) stays in a local run folder, `local_run_folder`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray
import ray.train
import yaml
from ray.train.torch import TorchTrainer

from spklip.config import ExperimentConfig, to_dict
from spklip.data import storage
from spklip.data.read import DatasetFacts, dataset_info
from spklip.logs import RunOutput
from spklip.outdir import private_dir
from spklip.rayenv import cluster_capacity, connect, init_local, resource_shortfall
from spklip.runtime.ray_private import session_dir
from spklip.train import data as train_data
from spklip.model import create_model
from spklip.train.checkpoint import load_model_weights, read_checkpoint
from spklip.train.epoch_eval import log_report_artifacts
from spklip.train.final_eval import BEST, FINAL, evaluate_on_test
from spklip.train.faults import FAULT_ENV_PREFIX
from spklip.train.model_log import log_encoder
from spklip.train.timing import Timeline
from spklip.train.torch_store import LoopbackTorchConfig
from spklip.train.worker import (FailFastOnDataError, ModelError, WorkerPlan, fail_fast_error_in,
                                 ray_resume_checkpoint, train_fn_per_worker)
from spklip.train.ownership import check_name, folder_location, lock_folder
from spklip.tracking import (SPOOL_DIR, Tracker, claim_run, credentials_env, ensure_experiment, git_commit,
                             is_remote, redact_text, resolve_uri, shard_set_dataset, start_run)

CONFIG_FILE = "spklip_config.json"  # inside {storage_path}/{run_name}: the run's flat config (`spklip train --resume`)
RUN_FILE = "spklip_run.json"  # inside {storage_path}/{run_name}: the MLflow run a resumed job keeps logging to
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
FOLDER_TAG = "spklip.run_folder"  # on a run's MLflow run: the folder it was created in (`spklip_run.json` too)
FOLDER_ID_TAG = "spklip.run_folder_id"  # and that folder's random id
COPIED_FROM_TAG = "spklip.copied_from"  # on the new MLflow run of a copied (or moved) run folder: the original run
FAILURE_TAG = "spklip.failure"  # on a FAILED or KILLED run: why, in one line (`run_closed`)
FAILURE_TAG_MAX = 1000  # characters of that line kept


class ResourceError(ValueError):
    """The worker group asks for more than the Ray cluster can ever give (`check_resources`)."""


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


def ensure_ray(address: str = "", verbose: bool = True, temp_parent: str | Path | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` when given, else start an in-process Ray (no-op if running).

    The in-process Ray listens on loopback only, with token authentication, its session folder private: under
    ``<temp_parent>/ray_tmp`` (the run or sweep folder; `spklip.rayenv.init_local`); its processes inherit this
    one's environment, MLflow credentials included (not passed in a runtime env: Ray's runtime-env agent writes
    those to its log). A cluster's processes get them (`spklip.tracking.credentials_env`) in the job's runtime env.
    `verbose` False: ``log_to_driver=False``, the workers' output stays in Ray's session logs (`ray_logs_dir`).
    Ray's own processes get the address of this cluster in the job's runtime env, so nothing of Ray's looks for a
    cluster by itself: Ray Train's placement-group cleaner calls the State API without an address, which otherwise
    fails with "Found multiple active Ray instances" whenever another Ray runs on the host.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        env = {"RAY_ADDRESS": address} if "://" not in address and address != "auto" else {}
        connect(address, log_to_driver=verbose, runtime_env=_job_env({**env, **credentials_env()}))
    else:
        port = _free_port()  # the dashboard is the State API's server: its address is known before Ray starts
        init_local(temp_parent, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                   configure_logging=False, log_to_driver=verbose,
                   runtime_env=_job_env({"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_env(env: dict[str, str]) -> dict | None:
    """``runtime_env`` with `env` minus what a submitted job's own runtime env sets (``ray job submit
    --runtime-env-json``: Ray refuses to merge the same variable twice)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    env = {k: v for k, v in env.items() if k not in taken}
    return {"env_vars": env} if env else None


def ray_logs_dir() -> str | None:
    """Ray's session log folder on this node (worker-*.out/err, logs/train, logs/ray-data), None without Ray."""
    session = session_dir()  # what Ray Train itself reads for its log folder (no public API)
    return os.path.join(session, "logs") if session is not None else None


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Absolute ``data.path`` and ``train.run_dir`` and an explicit ``tracking.uri``, so processes in other folders
    (Ray workers, Tune trials, a resumed run) mean the same files and the same MLflow store."""
    run_dir = Path(cfg.train.run_dir).resolve()
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, path=storage.absolute(cfg.data.path)),
        train=dataclasses.replace(cfg.train, run_dir=str(run_dir)),
        tracking=dataclasses.replace(cfg.tracking, uri=resolve_uri(cfg.tracking.uri, run_dir)))


def _world(cfg: ExperimentConfig) -> int:
    return max(1, cfg.scale.num_workers)


def local_run_folder(cfg: ExperimentConfig, storage_path: str, run_name: str) -> Path:
    """Where a run's logs, progress lines and tracking spool live: ``{storage_path}/{run_name}`` for local storage;
    for an object store (no appends there) its mirror under ``train.run_dir``:
    ``<run_dir>/s3/<bucket>/<prefix>/<run name>``."""
    if not storage.is_uri(storage_path):
        return Path(storage_path) / run_name
    scheme, _, rest = storage_path.partition("://")
    return Path(cfg.train.run_dir).joinpath(scheme, *rest.strip("/").split("/"), run_name)


def _mlflow_run(cfg: ExperimentConfig, run_name: str, run_folder: Path, dataset: DatasetFacts,
                parent_run_id: str | None, extra_tags: dict[str, str] | None = None,
                saved: str | Path | None = None) -> Tracker:
    """Reuse the MLflow run of an earlier attempt of this Ray run (resume), else start a new one: config as params
    and as ``config/resolved.yaml``, the shard set as the run's training input, system metrics from this process
    until the run ends. Calls the server cannot take go to ``<run folder>/tracking_spool``; the run id is kept in
    `saved` (default ``<run folder>/spklip_run.json``; for an object store, the run's folder in the bucket), with
    the folder it was made in: a copy of the folder resumed elsewhere (or a moved one) starts a new MLflow run,
    tagged with the original's id, rather than write into the original's."""
    uri = cfg.tracking.uri
    if not cfg.tracking.enabled:
        return Tracker(uri, None)
    saved = saved or run_folder / RUN_FILE
    spool = run_folder / SPOOL_DIR
    where = folder_location(str(saved).rpartition("/")[0])
    record = json.loads(storage.read_text(saved)) if storage.exists(saved) else None
    if record is not None and record.get("run_folder", where) != where:
        original = record.get("mlflow_run_id")
        print(f"spklip: {where} was created as {record['run_folder']}: a copy or a move, so it logs to a new MLflow "
              f"run (tag {COPIED_FROM_TAG}={original}), not to that folder's", file=sys.stderr, flush=True)
        extra_tags = {**(extra_tags or {}), **({COPIED_FROM_TAG: str(original)} if original else {})}
        record = None
    if record is not None:
        if record.get("tracking_auth") and is_remote(uri) and not credentials_env():
            print(f"spklip: this run logged to {uri} with credentials, which spklip does not store: set "
                  "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to resume logging to it", file=sys.stderr,
                  flush=True)
        tracker = Tracker(uri, record["mlflow_run_id"], spool_dir=spool)
        ensure_experiment(tracker, cfg.tracking.experiment, cfg.train.run_dir)  # an experiment made before the tag
    else:
        folder_id = uuid.uuid4().hex
        tags = {"git_commit": git_commit(), "dataset_fingerprint": dataset.fingerprint,
                "model_arch": cfg.model.arch, "model_preset": cfg.model_preset, "ray_run_name": run_name,
                FOLDER_TAG: where, FOLDER_ID_TAG: folder_id, **(extra_tags or {})}
        tracker = start_run(uri, cfg.tracking.experiment, cfg.train.run_dir, run_name=run_name,
                            params=cfg.to_flat_dict(), tags=tags, parent_run_id=parent_run_id, spool_dir=spool)
        if not tracker.enabled:
            return tracker
        tracker.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config/resolved.yaml")
        tracker.log_dataset(shard_set_dataset(dataset), context="training",
                            tags={"spklip.train_split": cfg.data.train_split, "spklip.val_split": cfg.data.val_split})
        run_folder.mkdir(parents=True, exist_ok=True)
        storage.write_text(saved, json.dumps({"mlflow_run_id": tracker.run_id, "tracking_uri": uri,
                                              "parent_run_id": parent_run_id, "run_folder": where,
                                              "run_folder_id": folder_id,
                                              "tracking_auth": bool(is_remote(uri) and credentials_env())}))
    claim_run(tracker, run_folder)  # `spklip tracking sync` closes the run as KILLED once this process is gone
    if cfg.tracking.system_metrics:
        # Here, on the driver, for the run's lifetime: the workers of an in-process Ray or a one-node cluster share
        # this host; on a multi-node cluster these are the driver node's figures (docs/training.md).
        tracker.start_system_metrics(cfg.tracking.system_metrics_interval_s)
    return tracker


def prepare_run(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
                mlflow_parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                timeline: Timeline | None = None, start_ray: Callable[..., None] | None = None) -> RunPlan:
    """Validate data and config, plan steps, lock the run folder (`spklip.train.ownership`: one driver per run, held
    until this process exits), open (or reopen) the MLflow run. Raises before any worker starts.

    `start_ray` (`fit`): called as ``start_ray(temp_parent=<run folder>)`` once every check has passed, while the
    MLflow run is being opened (both take seconds; Ray's start runs in its own processes)."""
    timeline = timeline or Timeline()
    if run_name is not None or cfg.tracking.run_name:
        check_name(run_name if run_name is not None else cfg.tracking.run_name,
                   "--name" if run_name is not None else "tracking.run_name")
    cfg = resolve_paths(cfg)
    dataset = dataset_info(cfg)
    timeline.mark("validate")
    spe = train_data.steps_per_epoch(dataset.split_rows[cfg.data.train_split], cfg, _world(cfg))
    total = spe * cfg.train.epochs
    total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    run_name = run_name or cfg.tracking.run_name or f"{cfg.model_preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_path = storage.absolute(storage_path or Path(cfg.train.run_dir) / "ray")
    private_dir(cfg.train.run_dir)  # every check passed: the MLflow store, checkpoints and spool, the user's alone
    run_folder = local_run_folder(cfg, storage_path, run_name)
    lock_folder(run_folder, f"run {run_name}")  # until this driver exits: a second driver of the run stops here
    check_before_workers(cfg, storage_path, run_name)  # a model that cannot be built, a resume that cannot be read
    config_file = storage.join(storage_path, run_name, CONFIG_FILE)
    if not storage.exists(config_file):  # the first attempt's config is what a --resume trains
        storage.write_text(config_file, json.dumps(cfg.to_flat_dict(), indent=1))
    with ThreadPoolExecutor(1, thread_name_prefix="spklip-mlflow-run") as pool:
        opening = pool.submit(_mlflow_run, cfg, run_name, run_folder, dataset, mlflow_parent_run_id, tags,
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
    Workers still check for themselves (`spklip.train.worker.FAIL_FAST`): a folder may exist here and not on their
    node."""
    if cfg.scale.num_workers == 0:
        return
    try:
        model = create_model(cfg.model, loss_cfg=cfg.loss)  # on the CPU; built again by each worker
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
    on its placement group (`spklip.rayenv.cluster_capacity`: exact without an autoscaler, the in-process Ray
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


def failure_line(error: BaseException) -> str:
    """`error` as the one line `FAILURE_TAG` keeps (no password in it: `redact_text`)."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    lines = [line.strip() for line in redact_text(str(error)).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not (isinstance(error, (ValueError, OSError)) and text):  # spklip's own words stand alone
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:FAILURE_TAG_MAX]


def end_run(tracker: Tracker, error: BaseException | None = None) -> None:
    """End the MLflow run: FINISHED without `error`; KILLED for Ctrl-C (``KeyboardInterrupt``) and SIGTERM (Ray's
    handler exits with ``SystemExit``); FAILED for anything else. An ended-by-error run is tagged `FAILURE_TAG`."""
    if error is None:
        tracker.terminate("FINISHED")
        return
    tracker.set_tags({FAILURE_TAG: failure_line(error)})
    tracker.terminate("KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")


@contextlib.contextmanager
def run_closed(tracker: Tracker) -> Iterator[None]:
    """``with run_closed(plan.tracker):`` the MLflow run ends with the block, however it ends (`end_run`)."""
    try:
        yield
    except BaseException as e:
        end_run(tracker, e)
        raise
    end_run(tracker)


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


def _use_gpu(cfg: ExperimentConfig) -> bool:
    if cfg.scale.use_gpu != "auto":
        return bool(cfg.scale.use_gpu)
    return ray.cluster_resources().get("GPU", 0) > 0


def build_trainer(plan: RunPlan, callbacks: Sequence[Any] = ()) -> TorchTrainer:
    """A ready-to-fit ``TorchTrainer`` for a `RunPlan` (Ray must be running: `ensure_ray`).

    Args:
        plan: from `prepare_run` (the config with absolute paths, the run name and storage, the MLflow run).
        callbacks: Ray Train callbacks, e.g. ``ray.tune.integration.ray_train.TuneReportCallback()``.
    """
    cfg = plan.cfg
    gpu, resources = worker_resources(cfg)
    run_dir = str(local_run_folder(cfg, plan.storage_path, plan.run_name))
    datasets = {"train": train_data.ray_train_dataset(cfg)}
    plan.timeline.mark("dataset")
    worker_plan = WorkerPlan(cfg=cfg, total_steps=plan.total_steps, dataset=plan.dataset, tracking_uri=plan.tracker.uri,
                             mlflow_run_id=plan.tracker.run_id if plan.tracker.enabled else None,
                             run_dir=run_dir, timeline=plan.timeline)
    # fault-injection switches (spklip.train.faults) reach the workers whatever environment Ray started them with
    env = {**WORKER_ENV, **{k: v for k, v in os.environ.items() if k.startswith(FAULT_ENV_PREFIX)}}
    return SpklipTrainer(
        train_fn_per_worker, train_loop_config={"plan": worker_plan}, torch_config=LoopbackTorchConfig(),
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


def fit(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
        callbacks: Sequence[Any] = (), mlflow_parent_run_id: str | None = None,
        tags: dict[str, str] | None = None, output: RunOutput | None = None,
        timeline: Timeline | None = None) -> FitResult:
    """Train `cfg` to the end and return its final evaluation metrics and checkpoints.

    ``tags`` are added to a new MLflow run (sweeps: trial id, seed, the trial's labels). ``output`` (``spklip
    train``): the driver's output goes to ``<run folder>/spklip.log``, rank 0's progress lines to stderr, and Ray
    starts with ``log_to_driver`` only when ``output.verbose``. ``timeline``: the command's start-up milestones so
    far (``spklip train``; default: start counting now), continued here and by the workers (`spklip.train.timing`).
    """
    t0 = time.perf_counter()
    # Ray starts after every check (bad input fails before Ray or any worker starts), while the MLflow run opens
    start_ray = functools.partial(ensure_ray, cfg.scale.address, verbose=output.verbose if output is not None else True)
    plan = prepare_run(cfg, run_name=run_name, storage_path=storage_path, mlflow_parent_run_id=mlflow_parent_run_id,
                       tags=tags, timeline=timeline, start_ray=start_ray)
    with run_closed(plan.tracker):  # from here on, every way out ends the MLflow run (FINISHED, KILLED, FAILED)
        if output is not None:
            output.attach(local_run_folder(plan.cfg, plan.storage_path, plan.run_name), follow=True)
            output.ray_logs = ray_logs_dir()
        check_resources(plan.cfg)  # before Ray Train waits on a placement group the cluster cannot hold
        result = _fit_trainer(build_trainer(plan, callbacks))
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
    """The metrics `out.best_checkpoint` was reported with (local mode ranks nothing: then the last report's)."""
    for checkpoint, metrics in result.best_checkpoints or ():
        if _checkpoint_uri(out.storage_path, checkpoint) == out.best_checkpoint:
            return dict(metrics)
    return dict(out.metrics) if out.best_checkpoint and out.best_checkpoint == out.checkpoint else {}


def _finish(plan: RunPlan, result, seconds: float) -> FitResult:
    """Collect checkpoints/metrics, score them on the test split, log the best encoder to MLflow (and register it).
    The run is ended by `fit` (`run_closed`): FINISHED, or FAILED when any of this fails."""
    best = None
    if result.best_checkpoints:
        sign = 1 if plan.cfg.train.metric_mode == "max" else -1
        best = max(result.best_checkpoints, key=lambda cm: sign * cm[1].get(plan.cfg.train.metric, float("-inf")))[0]
    elif result.checkpoint is not None:  # local mode ranks nothing: its last checkpoint is the evaluated end state
        best = result.checkpoint
    out = FitResult(metrics=dict(result.metrics or {}),
                    checkpoint=_checkpoint_uri(plan.storage_path, result.checkpoint),
                    best_checkpoint=_checkpoint_uri(plan.storage_path, best), run_name=plan.run_name,
                    storage_path=plan.storage_path, mlflow_run_id=plan.tracker.run_id if plan.tracker.enabled
                    else None, seconds=seconds)
    _test(plan, out)
    tracking = plan.cfg.tracking
    register_as = tracking.register_as if not _parent_run(plan) else ""  # a sweep registers its best trial only
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


def ray_storage(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: a local folder as it is; a URI as (path on the filesystem, the filesystem
    of `spklip.data.storage`: the endpoint from the environment, which Ray's own URI parsing ignores)."""
    if not storage.is_uri(storage_path):
        return {"storage_path": storage_path}
    fs, path = storage.resolve(storage_path)
    return {"storage_path": path, "storage_filesystem": fs}


def _checkpoint_uri(storage_path: str, checkpoint) -> str | None:
    """A Ray checkpoint's location as spklip names it: its folder, or a URI on an object store (Ray gives the path
    on its filesystem, without the scheme)."""
    if checkpoint is None:
        return None
    if storage.is_uri(storage_path):
        return f"{storage_path.partition('://')[0]}://{checkpoint.path.lstrip('/')}"
    return checkpoint.path


def _parent_run(plan: RunPlan) -> str | None:
    saved = storage.join(plan.storage_path, plan.run_name, RUN_FILE)
    return json.loads(storage.read_text(saved)).get("parent_run_id") if storage.exists(saved) else None
