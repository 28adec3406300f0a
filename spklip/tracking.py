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

Every call goes through `Tracker`, which never lets a tracking failure stop training:
  * A tracking server that goes away (connection refused, timeouts, 5xx) turns the tracker *offline*: what it
    could not send is kept in a local spool (JSON lines under ``<run folder>/tracking_spool/``, one file per
    tracker, artifacts copied beside it) and replayed, in order, at the first log call after a back-off (5 s,
    doubling up to 60 s) that finds the server back, and at the end of the run (`Tracker.terminate`). What is
    still unsent then stays in the spool for ``spklip tracking sync RUN_DIR`` (`sync_spool`).
  * Any other failure (a run that does not exist, a rejected value, a broken local store) is reported once on
    stderr and switches tracking off; training goes on (checkpoints are written by Ray, not by MLflow).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow's UI (3.x) to pick an experiment's landing page
TRAINING_KIND = "custom_model_development"  # its value for model training (the other: genai_development)
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value (it rejects longer ones; we truncate)
SPOOL_DIR = "tracking_spool"  # inside a run folder: what could not be sent to the tracking server
SPOOL_ENV = "SPKLIP_TRACKING_SPOOL"  # root of the spools of trackers that were given no folder
BACKOFF_S = (5.0, 60.0)  # first and longest wait before an offline tracker tries the server again
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
Record = dict[str, Any]  # one spooled call: {"op": ..., "t": unix seconds, ...op's fields}


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


def is_remote(uri: str) -> bool:
    return urlparse(uri or "").scheme in ("http", "https")


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


def default_spool_dir(run_id: str) -> Path:
    """Spool folder of a tracker that was given none: ``$SPKLIP_TRACKING_SPOOL/<run id>``, else
    ``~/.cache/spklip/tracking_spool/<run id>``. The launcher moves such files into the run folder at the end."""
    root = os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "spklip" / SPOOL_DIR
    return Path(root) / run_id


class Spool:
    """One tracker's unsent calls: an append-only JSON-lines file (first line: the URI and run id it belongs to)
    and the artifact files it refers to, copied into ``<folder>/files/``."""

    def __init__(self, folder: str | Path, uri: str, run_id: str):
        self.folder = Path(folder)
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.uri, self.run_id = uri, run_id

    def append(self, record: Record) -> None:
        if not self.path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            _append_line(self.path, {"uri": self.uri, "run_id": self.run_id})
        _append_line(self.path, {"t": time.time(), **record})

    def keep_file(self, src: str | Path, name: str | None = None) -> str:
        """Copy `src` into the spool (the original may be a temporary file) and return the copy's path."""
        dst = self.folder / "files" / uuid.uuid4().hex[:12] / (name or Path(src).name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
        return str(dst)

    def __len__(self) -> int:
        return len(read_spool_file(self.path)[1]) if self.path.exists() else 0


def _append_line(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:  # one write per line: trackers of other processes never interleave
        f.write(json.dumps(obj, default=str) + "\n")


def read_spool_file(path: str | Path) -> tuple[dict[str, str], list[Record]]:
    """The header (``uri``, ``run_id``) and the records of one spool file."""
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or "run_id" not in lines[0]:
        raise ValueError(f"{path}: not a spklip tracking spool (no header line)")
    return lines[0], lines[1:]


def _rewrite_spool_file(path: Path, header: dict, records: list[Record]) -> None:
    """Keep only `records` (the unsent ones); remove the file, and the copies it pointed to, once all are sent."""
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in [header, *records]), encoding="utf-8")
    tmp.replace(path)


def _is_transient(e: Exception, uri: str) -> bool:
    """Whether `e` means the tracking server is (for now) gone, rather than a call it rejected."""
    if not is_remote(uri):
        return False
    text = str(e)
    if "failed with exception" in text or "failed with timeout" in text:  # mlflow.utils.rest_utils: no response
        return True
    if getattr(e, "error_code", None) in TRANSIENT_CODES:
        return True
    return not server_reachable(uri, timeout=2.0)


class Tracker:
    """Failure-tolerant MLflow client bound to one run; a disabled tracker does nothing.

    Args:
        uri: Tracking URI (`resolve_uri`).
        run_id: The run to log to; None disables the tracker.
        spool_dir: Where calls that could not reach the server are kept (``<run folder>/tracking_spool``);
            default `default_spool_dir`.
    """

    def __init__(self, uri: str, run_id: str | None, spool_dir: str | Path | None = None):
        self.uri, self.run_id = uri, run_id
        self.enabled = run_id is not None
        self.spool_dir = Path(spool_dir) if spool_dir else None
        self._client = None
        self._spool: Spool | None = None
        self._offline = False
        self._retry_at = 0.0
        self._backoff = BACKOFF_S[0]
        self._lost: set[str] = set()
        self._monitor = None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a dead server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient  # on first use: importing mlflow costs ~1 s
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self.spool_dir or default_spool_dir(str(self.run_id)), self.uri, str(self.run_id))
        return self._spool

    @property
    def offline(self) -> bool:
        """True while the server is gone and calls go to the spool."""
        return self._offline

    def disable(self, reason: str) -> None:
        """Switch tracking off and say so once; training continues."""
        if self.enabled:
            print(f"spklip: MLflow tracking at {self.uri} failed ({reason}); training continues without "
                  "tracking and keeps its checkpoints.", file=sys.stderr, flush=True)
        self.enabled = False

    def call(self, fn: Callable[..., Any], *args, spool: Callable[[], Record | None] | None = None,
             **kwargs) -> Any:
        """Run one tracking call. When the server is gone, keep ``spool()`` (the call as a record) for later;
        on any other error disable tracking. Never raises."""
        if not self.enabled:
            return None
        if self._offline and not self._reconnect():
            self._keep(spool, fn)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            if _is_transient(e, self.uri):
                self._go_offline(e)
                self._keep(spool, fn)
            else:
                self.disable(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            return None

    def _keep(self, spool: Callable[[], Record | None] | None, fn: Callable) -> None:
        record = spool() if spool is not None else None
        if record is not None:
            self.spool.append(record)
            return
        what = getattr(fn, "__name__", str(fn))
        if what not in self._lost:  # a call with no record form (a read, a model logged by MLflow itself)
            self._lost.add(what)
            print(f"spklip: MLflow server at {self.uri} unreachable; {what} was not kept", file=sys.stderr)

    def _go_offline(self, e: Exception) -> None:
        if not self._offline:
            print(f"spklip: MLflow server at {self.uri} unreachable ({type(e).__name__}); keeping what cannot be "
                  f"sent in {self.spool.folder} and retrying", file=sys.stderr, flush=True)
        self._offline = True
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_S[1])

    def _reconnect(self, force: bool = False) -> bool:
        """Back online if the back-off is over, the server answers and this tracker's spool went through."""
        if not force and time.monotonic() < self._retry_at:
            return False
        if not server_reachable(self.uri, timeout=2.0):
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_S[1])
            return False
        try:
            sent, left = replay_spool_file(self.spool.path, self.client) if self.spool.path.exists() else (0, 0)
        except Exception as e:  # noqa: BLE001 - still gone: stay offline
            self._go_offline(e)
            return False
        if left:
            self._go_offline(RuntimeError("replay incomplete"))
            return False
        self._offline, self._backoff = False, BACKOFF_S[0]
        print(f"spklip: MLflow server at {self.uri} is back; sent {sent} kept call(s)", file=sys.stderr, flush=True)
        return True

    # One log_batch call each: MLflow's client splits it into batches within the server's limits (100 params/tags,
    # 1000 metrics per request). It logs synchronously unless MLFLOW_ENABLE_ASYNC_LOGGING=true, MLflow's own switch
    # (then errors surface in MLflow's logging thread instead of reaching the tracker).
    # mlflow.entities is imported on first use, not at the top: it costs ~1 s, and `spklip --help` imports this.
    def log_batch(self, metrics: list[tuple[str, float, int, int]] = (), params: list[tuple[str, str]] = (),
                  tags: list[tuple[str, str]] = ()) -> None:
        """Metrics as ``(key, value, timestamp_ms, step)``, params and tags as ``(key, value)``."""
        if not self.enabled or not (metrics or params or tags):
            return
        record = {"op": "log_batch", "metrics": list(metrics), "params": list(params), "tags": list(tags)}
        self.call(_send_batch, self.client, self.run_id, record, spool=lambda: record)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.log_batch(metrics=[(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None])

    def log_params(self, params: dict[str, Any]) -> None:
        self.log_batch(params=[(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.log_batch(tags=[(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(self.client.log_artifact, self.run_id, str(path), artifact_path,
                  spool=lambda: {"op": "log_artifact", "path": self.spool.keep_file(path),
                                 "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self.call(self.client.log_text, self.run_id, text, artifact_file, spool=lambda: self._artifact_record(
            artifact_file, lambda f: f.write_text(text, encoding="utf-8")))

    def log_figure(self, figure, artifact_file: str) -> None:
        self.call(self.client.log_figure, self.run_id, figure, artifact_file,
                  spool=lambda: self._artifact_record(artifact_file, figure.savefig))

    def _artifact_record(self, artifact_file: str, write: Callable[[Path], Any]) -> Record:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / Path(artifact_file).name
            write(f)
            kept = self.spool.keep_file(f)
        return {"op": "log_artifact", "path": kept, "artifact_path": str(Path(artifact_file).parent)
                if str(Path(artifact_file).parent) != "." else None}

    def log_dataset(self, dataset, context: str = "training", tags: dict[str, str] | None = None) -> None:
        """``mlflow.log_input`` for this run: `dataset` is an ``mlflow.data.Dataset`` (e.g. `shard_set_dataset`)."""
        if not self.enabled:
            return
        d = dataset.to_dict()
        record = {"op": "log_input", "dataset": {k: d.get(k) for k in ("name", "digest", "source_type", "source",
                                                                        "schema", "profile")},
                  "tags": {"mlflow.data.context": context, **(tags or {})}}
        self.call(_send_input, self.client, self.run_id, record, spool=lambda: record)

    def call_later(self, target: str, **kwargs) -> Any:
        """Run ``target(tracker, **kwargs)`` (a ``spklip.module:function`` name) now, or keep it in the spool
        when the server is gone (e.g. logging a model from a checkpoint). The kwargs must be JSON values, and the
        target must raise on failure (use ``tracker.client``, not the tracker's own swallowing methods)."""
        fn = _resolve_target(target)
        return self.call(fn, self, **kwargs, spool=lambda: {"op": "call", "target": target, "kwargs": kwargs})

    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU when nvidia-ml-py finds one) on this
        process's host, logging ``system/...`` every `interval_s` until `terminate`."""
        if not self.enabled or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # needs psutil
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=True,
                                                 tracking_uri=self.uri)
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 - no psutil, or the server is gone: the run goes on without them
            self._monitor = None
            print(f"spklip: no system metrics ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)

    def stop_system_metrics(self) -> None:
        """Stop the monitor after one last sample, so that a run shorter than the interval has its metrics too."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception:  # noqa: BLE001 - the server went away: the system metrics are not worth failing for
            pass

    def terminate(self, status: str = "FINISHED") -> None:
        """End the run with `status`. An offline tracker first sends its spool and any spool of the same run left
        in its folder; what still cannot be sent stays there, the status included, for ``spklip tracking sync``."""
        self.stop_system_metrics()
        if not self.enabled:
            if self.run_id not in (None, "pending"):  # switched off by a rejected call: still end the run
                try:
                    self.client.set_terminated(self.run_id, status)
                except Exception:  # noqa: BLE001 - already reported when tracking was switched off
                    pass
            return
        if self.spool_dir:  # the driver's tracker: a worker's spool of this run (given no folder) goes with it
            self.adopt(default_spool_dir(str(self.run_id)))
        if self._offline or (self.spool_dir and any(self.spool_dir.glob("*.jsonl"))):
            self._flush_folder()
        record = {"op": "set_terminated", "status": status, "end_time": int(time.time() * 1000)}
        self.call(self.client.set_terminated, self.run_id, status, record["end_time"], spool=lambda: record)
        if self._offline:
            print(f"spklip: MLflow server at {self.uri} still unreachable at the end of the run; {len(self.spool)} "
                  f"call(s) kept in {self.spool.folder}: send them with `spklip tracking sync "
                  f"{self.spool.folder.parent}`", file=sys.stderr, flush=True)

    def adopt(self, folder: str | Path) -> int:
        """Move the spool files of this run found in `folder` (e.g. a worker's `default_spool_dir`) into this
        tracker's spool folder, so that they are sent with it; returns how many."""
        folder, moved = Path(folder), 0
        if not folder.is_dir() or folder.resolve() == self.spool.folder.resolve():
            return 0
        for f in sorted(folder.glob("*.jsonl")):
            if read_spool_file(f)[0].get("run_id") == self.run_id:
                self.spool.folder.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), self.spool.folder / f.name)  # the files it names keep their absolute paths
                moved += 1
        return moved

    def _flush_folder(self) -> None:
        if not server_reachable(self.uri, timeout=2.0):
            self._go_offline(ConnectionError("server unreachable"))
            return
        try:
            result = sync_spool(self.spool.folder, client=self.client, quiet=True)
        except Exception as e:  # noqa: BLE001
            self._go_offline(e)
            return
        if result.left:
            self._go_offline(ConnectionError("replay incomplete"))
        else:
            self._offline, self._backoff = False, BACKOFF_S[0]


def _send_batch(client, run_id: str, record: Record) -> None:
    from mlflow.entities import Metric, Param, RunTag
    client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in record["metrics"]],
                     params=[Param(k, v) for k, v in record["params"]],
                     tags=[RunTag(k, v) for k, v in record["tags"]])


def _send_input(client, run_id: str, record: Record) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag
    tags = [InputTag(k, str(v)) for k, v in record["tags"].items()]
    client.log_inputs(run_id, datasets=[DatasetInput(Dataset(**record["dataset"]), tags)])


def _resolve_target(target: str) -> Callable:
    module, _, name = target.partition(":")
    if not module.startswith("spklip.") or not name:
        raise ValueError(f"spool target {target!r} is not a spklip function (module:function)")
    return getattr(importlib.import_module(module), name)


def _send(client, tracker: Tracker | None, run_id: str, record: Record) -> None:
    """Send one spooled record to `run_id`."""
    op = record["op"]
    if op == "log_batch":
        _send_batch(client, run_id, record)
    elif op == "log_artifact":
        client.log_artifact(run_id, record["path"], record["artifact_path"])
    elif op == "log_input":
        _send_input(client, run_id, record)
    elif op == "set_terminated":
        client.set_terminated(run_id, record["status"], record["end_time"])
    elif op == "call":
        target = _resolve_target(record["target"])
        target(tracker or Tracker(client.tracking_uri, run_id), **record["kwargs"])
    else:
        raise ValueError(f"unknown spooled call {op!r}")


def replay_spool_file(path: str | Path, client) -> tuple[int, int]:
    """Send the records of one spool file in order; stop at the first failure (it propagates) and keep the
    unsent ones in the file. Returns ``(sent, left)``."""
    path = Path(path)
    header, records = read_spool_file(path)
    sent = 0
    try:
        for record in records:
            _send_record(client, header, record)
            sent += 1
    finally:
        _rewrite_spool_file(path, header, records[sent:])
        if sent == len(records):
            _remove_kept_files(records)
    return sent, len(records) - sent


def _send_record(client, header: dict, record: Record) -> None:
    tracker = None
    if record["op"] == "call":  # the target gets a tracker of the run, sharing this client
        tracker = Tracker(client.tracking_uri, header["run_id"])
        tracker._client = client
    _send(client, tracker, header["run_id"], record)


def _remove_kept_files(records: list[Record]) -> None:
    for r in records:
        if r["op"] == "log_artifact" and "/files/" in r["path"]:
            shutil.rmtree(Path(r["path"]).parent, ignore_errors=True)


class SyncResult:
    """What `sync_spool` sent and left, per run."""

    def __init__(self):
        self.sent: dict[str, int] = {}
        self.left: dict[str, int] = {}
        self.status: dict[str, str] = {}


def spool_folder(run_dir: str | Path) -> Path:
    """The spool of a run folder (or the spool folder itself when given one)."""
    run_dir = Path(run_dir)
    return run_dir if run_dir.name == SPOOL_DIR else run_dir / SPOOL_DIR


def sync_spool(run_dir: str | Path, uri: str | None = None, client=None, quiet: bool = False) -> SyncResult:
    """Send every kept call under ``<run_dir>/tracking_spool`` (all trackers of the run, the worker's too) to its
    run: metrics, params, tags, artifacts and inputs first, in the order they were made, then the final status.

    Args:
        run_dir: a run folder (``<storage>/<run name>``, holding ``spklip_run.json``) or its spool folder.
        uri: send to this tracking URI instead of the one each file was kept for (the server moved).
        client: an ``MlflowClient`` to use (default: one per URI).

    Raises:
        ConnectionError: the server cannot be reached (nothing was sent); a failing call propagates after the
            calls before it were sent and removed from the spool.
    """
    folder = spool_folder(run_dir)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    result = SyncResult()
    loaded = [(f, *read_spool_file(f)) for f in files]
    clients: dict[str, Any] = {}

    def client_for(header: dict):
        target = uri or header["uri"]
        if client is not None and not uri:
            return client
        if target not in clients:
            if not server_reachable(target):
                raise ConnectionError(f"MLflow server at {target} is unreachable; nothing sent")
            from mlflow.tracking import MlflowClient  # on first use: importing mlflow costs ~1 s
            clients[target] = MlflowClient(tracking_uri=target)
        return clients[target]

    order = sorted(((r["op"] == "set_terminated", r.get("t", 0.0), i, j)  # by time, the final statuses last
                    for i, (_, _, records) in enumerate(loaded) for j, r in enumerate(records)))
    done: set[tuple[int, int]] = set()
    try:
        for _, _, i, j in order:
            _, header, records = loaded[i]
            _send_record(client_for(header), header, records[j])
            done.add((i, j))
            run = header["run_id"]
            result.sent[run] = result.sent.get(run, 0) + 1
            if records[j]["op"] == "set_terminated":
                result.status[run] = records[j]["status"]
    finally:
        for i, (f, header, records) in enumerate(loaded):
            unsent = [r for j, r in enumerate(records) if (i, j) not in done]
            _rewrite_spool_file(f, header, unsent)
            if not unsent:
                _remove_kept_files(records)
            else:
                result.left[header["run_id"]] = result.left.get(header["run_id"], 0) + len(unsent)
    if not quiet:
        for run, n in result.sent.items():
            print(f"spklip: sent {n} kept call(s) to run {run}" + (f" (status {result.status[run]})"
                  if run in result.status else ""), file=sys.stderr)
    return result


def shard_set_dataset(info: dict[str, Any]):
    """An ``mlflow.data`` dataset for a shard folder (`spklip.data.read.dataset_info`): named by the folder, the
    fingerprint as digest, the folder as source, splits and class counts as its profile."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source  # on first use: mlflow.data is heavy
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # the local-file source is registered under two schemes: same class, a warning
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(info["path"]))
    profile = {"splits": dict(info["split_rows"]), "num_classes": len(info["class_names"]),
               "seen_classes": len(info["seen_ids"]), "unseen_classes": len(info["unseen_ids"]),
               "clip_shape": list(info.get("clip_shape") or [])}
    return _ProfiledDataset(MetaDataset(source, name=Path(info["path"]).name, digest=info["fingerprint"]), profile)


class _ProfiledDataset:
    """A `MetaDataset` with a profile (MetaDataset carries none); all `Tracker.log_dataset` reads is `to_dict`."""

    def __init__(self, dataset, profile: dict[str, Any]):
        self.dataset, self.profile = dataset, profile
        self.name, self.digest, self.source = dataset.name, dataset.digest, dataset.source

    def to_dict(self) -> dict[str, Any]:
        return {**self.dataset.to_dict(), "profile": json.dumps(self.profile)}


def ensure_experiment(tracker: Tracker, experiment: str, run_dir: str | Path) -> str | None:
    """Id of `experiment` (created with an explicit artifact location if missing), tagged as model training."""
    exp = tracker.call(tracker.client.get_experiment_by_name, experiment)
    if exp is None:
        exp_id = tracker.call(tracker.client.create_experiment, experiment, artifact_location(run_dir, experiment),
                              tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # an experiment made by hand or an older spklip
            tracker.call(tracker.client.set_experiment_tag, exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp_id


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


BEST_ALIAS = "best"  # registry alias (MLflow's stages are deprecated; "latest" is reserved: models:/NAME/latest)
SCORE_TAG = "spklip.score"  # on a model version: its checkpoint's value of SCORE_METRIC_TAG
SCORE_METRIC_TAG, SCORE_MODE_TAG = "spklip.metric", "spklip.metric_mode"
CHECKPOINT_FILES = "extra_files"  # inside a logged model: the checkpoint folder's files (state.pt, config.json)


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
