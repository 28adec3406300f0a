"""MLflow tracking for spklip: experiment/run setup on the driver, failure-tolerant logging from rank 0.

Where runs go:
  * ``tracking.uri`` if set, else ``MLFLOW_TRACKING_URI``, else a local sqlite file ``<run_dir>/mlflow.db`` (no
    server). Artifacts of new experiments go to ``<run_dir>/mlartifacts/<experiment>`` (an explicit, absolute
    artifact location: an experiment created without one inside a Ray worker would put its artifacts in that
    worker's temporary working directory).
  * The driver (the launcher, or a Tune trial) creates the experiment and the run, logs the flat config as params
    and the git commit / dataset fingerprint as tags, then passes the run id to the workers. Only rank 0 logs
    metrics and artifacts to it.
  * A sweep passes ``parent_run_id``; the run gets the ``mlflow.parentRunId`` tag and shows as a child.
Every call goes through `Tracker`, which swallows tracking failures: the first one is reported once on stderr,
tracking is switched off, and training goes on (checkpoints are written by Ray, not by MLflow).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

PARENT_TAG = "mlflow.parentRunId"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value (it rejects longer ones; we truncate)


def resolve_uri(uri: str, run_dir: str | Path) -> str:
    """The tracking URI a run uses (see the module docstring for the order)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(run_dir).resolve() / 'mlflow.db')}"


def artifact_location(run_dir: str | Path, experiment: str) -> str:
    """Absolute ``file://`` artifact folder for a new experiment."""
    return (Path(run_dir).resolve() / "mlartifacts" / experiment).as_uri()


def server_reachable(uri: str, timeout: float = 3.0) -> bool:
    """True for local stores; for http(s) URIs, whether a TCP connection to the server opens within `timeout`."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def git_commit(path: str | Path | None = None) -> str:
    """``HEAD`` of the repository holding `path` (default: this package), or ``unknown``."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Failure-tolerant MLflow client bound to one run; a disabled tracker does nothing.

    Args:
        uri: Tracking URI (`resolve_uri`).
        run_id: The run to log to; None disables the tracker.
    """

    def __init__(self, uri: str, run_id: str | None):
        self.uri, self.run_id = uri, run_id
        self.enabled = run_id is not None
        self._client = None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient  # on first use: importing mlflow costs ~1 s
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def disable(self, reason: str) -> None:
        """Switch tracking off and say so once; training continues."""
        if self.enabled:
            print(f"spklip: MLflow tracking at {self.uri} failed ({reason}); training continues without "
                  "tracking and keeps its checkpoints.", file=sys.stderr, flush=True)
        self.enabled = False

    def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run one tracking call; on any error disable tracking instead of raising."""
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            self.disable(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return None

    # One log_batch call each: MLflow's client splits it into batches within the server's limits (100 params/tags,
    # 1000 metrics per request). It logs synchronously unless MLFLOW_ENABLE_ASYNC_LOGGING=true, MLflow's own switch
    # (then errors surface in MLflow's logging thread instead of disabling the tracker).
    # mlflow.entities is imported on first use, not at the top: it costs ~1 s, and `spklip --help` imports this.
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        self.call(self.client.log_batch, self.run_id, metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param
        self.call(self.client.log_batch, self.run_id,
                  params=[Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag
        self.call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.call(self.client.log_text, self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.call(self.client.log_figure, self.run_id, figure, artifact_file)

    def terminate(self, status: str = "FINISHED") -> None:
        self.call(self.client.set_terminated, self.run_id, status)


def start_run(uri: str, experiment: str, run_dir: str | Path, *, run_name: str = "", params: dict | None = None,
              tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Tracker:
    """Driver side: get or create the experiment (explicit artifact location), create a run, log params/tags.

    Returns:
        A `Tracker` bound to the new run, or a disabled one when the server is unreachable (said once).
    """
    tracker = Tracker(uri, run_id="pending")
    if not server_reachable(uri):
        tracker.disable("server unreachable")
        return tracker
    exp = tracker.call(tracker.client.get_experiment_by_name, experiment)
    exp_id = exp.experiment_id if exp is not None else tracker.call(
        tracker.client.create_experiment, experiment, artifact_location(run_dir, experiment))
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


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.search_runs``: no ``tracking_uri`` argument) at `uri`
    for the block. set_tracking_uri also exports ``MLFLOW_TRACKING_URI``; the previous value is put back after
    (None unsets it, so later runs resolve their own URI again)."""
    import mlflow  # on first use: importing mlflow costs ~1 s

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_torch_model(tracker: Tracker, model, input_example, name: str = "visual_encoder") -> str | None:
    """Log `model` as an MLflow PyTorch model (pickle format, so stateful spiking modules reload as themselves).

    Returns:
        The model URI (``models:/...``) to load it back with ``mlflow.pytorch.load_model``, or None if tracking
        is off or failed.
    """
    if not tracker.enabled:
        return None

    def _log():
        import mlflow  # on first use: importing mlflow (and its pytorch flavour) costs seconds
        import mlflow.pytorch
        with fluent_tracking_uri(tracker.uri), mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.pytorch.log_model(model, name=name, input_example=input_example,
                                            serialization_format="pickle", pip_requirements=[])
        return info.model_uri

    return tracker.call(_log)
