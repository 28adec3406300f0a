"""Models in MLflow: a checkpoint's safetensors folder logged as an MLflow logged model of its run, registered with
the alias ``best`` when it beats the current best, and downloaded back for spklip's own loader."""

from __future__ import annotations

import warnings
from pathlib import Path

from spklip.runtime.tracking.store import fluent_tracking_uri
from spklip.runtime.tracking.tracker import Tracker

BEST_ALIAS = "best"  # registry alias (MLflow's stages are deprecated; "latest" is reserved: models:/NAME/latest)
SCORE_TAG = "spklip.score"  # on a model version: its checkpoint's value of SCORE_METRIC_TAG
SCORE_METRIC_TAG, SCORE_MODE_TAG = "spklip.metric", "spklip.metric_mode"
MODEL_NAME = "visual_encoder"  # the logged model's name in its run: runs:/<run id>/visual_encoder
MODEL_TYPE = "spklip-safetensors"  # MLflow's model_type of the logged model (searchable)


def send_model_folder(tracker: Tracker, folder: str | Path, name: str = MODEL_NAME) -> str:
    """Log the files of `folder` (a logged model folder, `spklip.train.export.export_checkpoint`) as an MLflow
    logged model `name` of the tracker's run. Raises on failure; the run's status is left as it was.

    No MLmodel file and no flavour: MLflow stores the files and the registry versions them, and only spklip's own
    loader (`download_model`, then `spklip.train.export.load_model`) reads them back, so nothing in the store is
    ever unpickled.

    Returns:
        The model URI, ``models:/<model id>`` (``runs:/<run id>/<name>`` names it too).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus  # on first use: importing mlflow costs ~1 s

    client = tracker.client
    run = client.get_run(tracker.run_id)
    model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=tracker.run_id,
                                       model_type=MODEL_TYPE)
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(tracker.run_id, [LoggedModelOutput(model.model_id, step=0)])  # the run's "Logged models"
    return f"models:/{model.model_id}"


def register_model(tracker: Tracker, model_uri: str, name: str, *, metric: str, mode: str,
                   score: float | None, tags: dict[str, str] | None = None) -> str:
    """Register `model_uri` as a new version of `name`, with alias ``best`` when its `score` on `metric` beats the
    current ``best`` version's (or there is none). Raises on failure; returns the version.

    ``models:/NAME@best`` then names the best model registered so far, ``models:/NAME/latest`` the newest.
    """
    import mlflow  # on first use: importing mlflow costs ~1 s
    from mlflow.exceptions import MlflowException

    client = tracker.client
    version_tags = {SCORE_METRIC_TAG: metric, SCORE_MODE_TAG: mode, **(tags or {})}
    if score is not None:
        version_tags[SCORE_TAG] = repr(float(score))
    with fluent_tracking_uri(tracker.uri), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        version = mlflow.register_model(model_uri, name, tags=version_tags).version
    try:
        best = client.get_model_version_by_alias(name, BEST_ALIAS)
        best_score = float(best.tags[SCORE_TAG]) if SCORE_TAG in best.tags else None
    except MlflowException:  # no best yet
        best_score = best = None
    sign = 1 if mode == "max" else -1
    if best is None or best_score is None or (score is not None and sign * score > sign * best_score):
        client.set_registered_model_alias(name, BEST_ALIAS, version)
    return str(version)


def download_model(model_uri: str, dst: str | Path, uri: str | None = None) -> Path:
    """The files of a model spklip logged (``models:/NAME@best``, ``runs:/ID/visual_encoder``,
    ``models:/<model id>``), downloaded under `dst`, for `spklip.train.export.load_model` (which never unpickles
    them)."""
    import mlflow  # on first use: importing mlflow costs ~1 s

    with fluent_tracking_uri(uri or mlflow.get_tracking_uri()):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
