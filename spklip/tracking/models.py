"""Models in MLflow: a PyTorch model logged into a run (carrying its checkpoint's files), registered with the alias
``best`` when it beats the current best, and its checkpoint downloaded back."""

from __future__ import annotations

import warnings
from pathlib import Path

from spklip.tracking.store import fluent_tracking_uri
from spklip.tracking.tracker import Tracker

BEST_ALIAS = "best"  # registry alias (MLflow's stages are deprecated; "latest" is reserved: models:/NAME/latest)
SCORE_TAG = "spklip.score"  # on a model version: its checkpoint's value of SCORE_METRIC_TAG
SCORE_METRIC_TAG, SCORE_MODE_TAG = "spklip.metric", "spklip.metric_mode"
CHECKPOINT_FILES = "extra_files"  # inside a logged model: the checkpoint folder's files (state.pt, config.json)


def log_torch_model(tracker: Tracker, model, input_example, name: str = "visual_encoder",
                    extra_files: list[str] | None = None) -> str | None:
    """Log `model` as an MLflow PyTorch model (pickle format, so stateful spiking modules reload as themselves),
    with `extra_files` copied into its ``extra_files/`` folder.

    Returns:
        The model URI (``models:/...``) to load it back with ``mlflow.pytorch.load_model``, or None if tracking
        is off or failed.
    """
    if not tracker.enabled:
        return None
    return tracker.call(send_torch_model, tracker, model, input_example, name, extra_files)


def send_torch_model(tracker: Tracker, model, input_example, name: str = "visual_encoder",
                     extra_files: list[str] | None = None) -> str:
    """`log_torch_model` that raises on failure. Leaves the run's status as it was (``mlflow.start_run`` marks the
    run FINISHED when its block ends: a training run still RUNNING, or an early-stopped KILLED trial)."""
    import mlflow  # on first use: importing mlflow (and its pytorch flavour) costs seconds
    import mlflow.pytorch

    status = tracker.client.get_run(tracker.run_id).info.status
    with fluent_tracking_uri(tracker.uri), mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pytorch.log_model(model, name=name, input_example=input_example, extra_files=extra_files,
                                        serialization_format="pickle", pip_requirements=[])
    tracker.client.update_run(tracker.run_id, status=status)
    return info.model_uri


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


def download_checkpoint(model_uri: str, dst: str | Path, uri: str | None = None) -> Path:
    """The checkpoint folder inside a model spklip logged (``models:/NAME@best``, ``runs:/ID/visual_encoder``),
    downloaded under `dst`; raises FileNotFoundError when the model carries none."""
    import mlflow  # on first use: importing mlflow costs ~1 s

    with fluent_tracking_uri(uri or mlflow.get_tracking_uri()):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    folder = local / CHECKPOINT_FILES
    if not (folder / "state.pt").exists():
        raise FileNotFoundError(f"{model_uri}: the model holds no spklip checkpoint ({CHECKPOINT_FILES}/state.pt); "
                                "it was logged before models carried their checkpoint")
    return folder
