"""Driver side run set-up: the experiment (explicit artifact location, tagged as model training), the run (params,
tags, a sweep's parent), and the git commit it records."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlflow.exceptions import MlflowException

from spklip.runtime.tracking.store import artifact_location, server_reachable
from spklip.runtime.tracking.tracker import Tracker

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow's UI (3.x) to pick an experiment's landing page
TRAINING_KIND = "custom_model_development"  # its value for model training (the other: genai_development)


def git_commit(path: str | Path | None = None) -> str:
    """``HEAD`` of the repository holding `path` (default: this package), or ``unknown``."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(tracker: Tracker, experiment: str, run_dir: str | Path) -> str | None:
    """Id of `experiment` (created with an explicit artifact location if missing), tagged as model training."""
    exp = tracker.call(tracker.client.get_experiment_by_name, experiment)
    if exp is None:
        exp_id = tracker.call(_create_experiment, tracker.client, experiment, artifact_location(run_dir, experiment))
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # an experiment made by hand or an older spklip
            tracker.call(tracker.client.set_experiment_tag, exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp_id


def _create_experiment(client, experiment: str, location: str) -> str:
    """Create `experiment`; when it exists by now, its id: another process created it since it was looked up (two
    trials on a fresh store), or MLflow's client retried a create whose first answer came too late."""
    try:
        return client.create_experiment(experiment, location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


def start_run(uri: str, experiment: str, run_dir: str | Path, *, run_name: str = "", params: dict | None = None,
              tags: dict[str, str] | None = None, parent_run_id: str | None = None,
              spool_dir: str | Path | None = None) -> Tracker:
    """Driver side: get or create the experiment (explicit artifact location, the training kind tag), create a
    run, log params/tags.

    Returns:
        A `Tracker` bound to the new run, or a disabled one when the server is unreachable (said once).
    """
    tracker = Tracker(uri, run_id="pending", spool_dir=spool_dir)
    if not server_reachable(uri):
        tracker.disable("server unreachable")
        return tracker
    exp_id = ensure_experiment(tracker, experiment, run_dir)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = tracker.call(tracker.client.create_run, exp_id, tags=all_tags, run_name=run_name or None) \
        if exp_id is not None else None
    if run is None:
        tracker.disable("could not create the run")
        return tracker
    tracker.run_id = run.info.run_id
    tracker.log_params(params or {})
    return tracker
