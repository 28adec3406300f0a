"""The failure-tolerant MLflow client of one run (`Tracker`); a tracking failure never stops training.

* A tracking server that goes away (connection refused, timeouts, 5xx) turns the tracker *offline*: what it could
  not send goes to its `Spool` (``<run folder>/tracking_spool/``) and is replayed, in order, at the first log call
  after a back-off (5 s, doubling up to 60 s) that finds the server back, and at the end of the run
  (`Tracker.terminate`). What is still unsent then stays in the spool for ``spklip tracking sync RUN_DIR``
  (`spklip.runtime.tracking.sync_spool`).
* Any other failure (a run that does not exist, a rejected value, a broken local store) is reported once on stderr
  and switches tracking off; training goes on (checkpoints are written by Ray, not by MLflow).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from spklip.runtime.tracking.replay import (Deferred, operation_record, replay_folder, replay_spool_file, send_batch,
                                    send_input)
from spklip.runtime.tracking.spool import Record, Spool, default_spool_dir, move_run_files
from spklip.runtime.tracking.store import is_remote, server_reachable

PARAM_VALUE_LIMIT = 6000  # MLflow's limit on one param value (it rejects longer ones; we truncate)
BACKOFF_S = (5.0, 60.0)  # first and longest wait before an offline tracker tries the server again
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


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

    @classmethod
    def sharing(cls, client, run_id: str) -> Tracker:
        """A tracker of `run_id` that uses `client` (what a replayed ``call`` record's target gets)."""
        tracker = cls(client.tracking_uri, run_id)
        tracker._client = client
        return tracker

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
            sent, left = replay_spool_file(self.spool.path, self.client, Tracker.sharing) \
                if self.spool.path.exists() else (0, 0)
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
    def log_batch(self, metrics: list[tuple[str, float, int, int]] = (), params: list[tuple[str, str]] = (),
                  tags: list[tuple[str, str]] = ()) -> None:
        """Metrics as ``(key, value, timestamp_ms, step)``, params and tags as ``(key, value)``."""
        if not self.enabled or not (metrics or params or tags):
            return
        record = {"op": "log_batch", "metrics": list(metrics), "params": list(params), "tags": list(tags)}
        self.call(send_batch, self.client, self.run_id, record, spool=lambda: record)

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
        self.call(send_input, self.client, self.run_id, record, spool=lambda: record)

    def call_later(self, op: Deferred) -> Any:
        """Run the deferred operation `op` (``op.run(self)``, e.g. `spklip.runtime.model_log.LogEncoder`) now, or
        keep it in the spool when the server is gone; its result, None when kept (see `spklip.runtime.tracking.replay`)."""
        return self.call(op.run, self, spool=lambda: operation_record(op))

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
        return move_run_files(folder, self.spool.folder, self.run_id)

    def _flush_folder(self) -> None:
        if not server_reachable(self.uri, timeout=2.0):
            self._go_offline(ConnectionError("server unreachable"))
            return
        try:
            result = replay_folder(self.spool.folder, Tracker.sharing, client=self.client, quiet=True)
        except Exception as e:  # noqa: BLE001
            self._go_offline(e)
            return
        if result.left:
            self._go_offline(ConnectionError("replay incomplete"))
        else:
            self._offline, self._backoff = False, BACKOFF_S[0]
