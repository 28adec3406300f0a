"""MLflow tracking for spklip: experiment/run setup on the driver, failure-tolerant logging from rank 0.

Where runs go:
  * ``tracking.uri`` if set, else ``MLFLOW_TRACKING_URI``, else a local sqlite file ``<run_dir>/mlflow.db`` (no
    server). Artifacts of new experiments go to ``<run_dir>/mlartifacts/<experiment>`` (an explicit, absolute
    artifact location: an experiment created without one inside a Ray worker would put its artifacts in that
    worker's temporary working directory).
  * Every experiment spklip logs to carries MLflow's experiment-kind tag for model training
    (``mlflow.experimentKind=custom_model_development``), so the UI opens it on the runs table, not on the GenAI
    overview.
  * The driver (the launcher, or a Tune trial) creates the experiment and the run, logs the flat config as params
    and the git commit / dataset fingerprint as tags, then passes the run id to the workers. Only rank 0 logs
    metrics and artifacts to it.
  * A sweep passes ``parent_run_id``; the run gets the ``mlflow.parentRunId`` tag and shows as a child.

Every call goes through `Tracker`, which never lets a tracking failure stop training: a server that goes away
turns it offline, what it cannot send is kept in a local spool and replayed when the server is back, at the end of
the run, or by ``spklip tracking sync RUN_DIR`` (`sync_spool`); any other failure switches tracking off.

The modules, each importing only those listed before it:
  * `store`: the tracking URI (credentials moved to MLflow's environment, never stored), artifact locations, whether
    a server answers, MLflow's fluent API pointed at a URI.
  * `spool`: the offline spool on disk (JSON-lines files and the artifact copies they name).
  * `replay`: records sent through a live ``MlflowClient`` (live and from spool files); the typed deferred
    operations (`deferred`) a spool may keep.
  * `datasets`: the shard folder as a run's dataset input.
  * `tracker`: `Tracker`, which owns its `Spool`.
  * `sync`: `sync_spool`, a run folder's spool sent to its server.
  * `driver`: the process driving a run (`claim_run`), runs whose driver is gone closed as KILLED.
  * `runs`: the experiment and the run (`start_run`), the git commit.
  * `models`: models logged as safetensors folders (no pickles), registered (alias ``best``) and downloaded.
"""

from spklip.runtime.tracking.datasets import shard_set_dataset
from spklip.runtime.tracking.driver import DRIVER_FILE, claim_run, close_abandoned_run
from spklip.runtime.tracking.models import (BEST_ALIAS, MODEL_NAME, SCORE_METRIC_TAG, SCORE_MODE_TAG, SCORE_TAG, download_model,
                                    register_model, send_model_folder)
from spklip.runtime.tracking.replay import Deferred, SyncResult, deferred
from spklip.runtime.tracking.runs import (EXPERIMENT_KIND_TAG, PARENT_TAG, TRAINING_KIND, ensure_experiment, git_commit,
                                  start_run)
from spklip.runtime.tracking.spool import (SPOOL_DIR, SPOOL_ENV, Record, Spool, default_spool_dir, read_spool_file,
                                   spool_folder)
from spklip.runtime.tracking.store import (adopt_credentials, artifact_location, credentials_env, fluent_tracking_uri,
                                   is_remote, redact_text, redact_uri, resolve_uri, server_reachable)
from spklip.runtime.tracking.sync import sync_spool
from spklip.runtime.tracking.tracker import PARAM_VALUE_LIMIT, Tracker

__all__ = [
    "BEST_ALIAS", "Deferred", "deferred", "DRIVER_FILE", "EXPERIMENT_KIND_TAG", "MODEL_NAME", "PARAM_VALUE_LIMIT", "PARENT_TAG",
    "SCORE_METRIC_TAG", "SCORE_MODE_TAG", "SCORE_TAG", "SPOOL_DIR", "SPOOL_ENV", "TRAINING_KIND", "adopt_credentials",
    "artifact_location", "claim_run", "close_abandoned_run", "credentials_env", "default_spool_dir", "download_model",
    "ensure_experiment", "fluent_tracking_uri", "git_commit", "is_remote", "read_spool_file", "Record", "redact_text",
    "redact_uri", "register_model", "resolve_uri", "send_model_folder", "server_reachable", "shard_set_dataset",
    "Spool", "spool_folder", "start_run", "sync_spool", "SyncResult", "Tracker"
]
