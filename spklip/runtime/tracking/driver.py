"""Which process drives a run, and closing the runs whose driver is gone.

A driver killed with SIGKILL (or a lost machine) never ends its MLflow run: it stays RUNNING. The driver records
itself in ``<run folder>/spklip_driver.json`` when the run starts or resumes (`claim_run`); ``spklip tracking sync
RUN_DIR`` then marks a run still RUNNING whose driver process no longer exists KILLED (`close_abandoned_run`), and a
``spklip train --resume`` of it makes it RUNNING again and ends it as any run.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from spklip.runtime.tracking.spool import SPOOL_DIR
from spklip.runtime.tracking.tracker import Tracker

DRIVER_FILE = "spklip_driver.json"
CLOSED_TAG = "spklip.closed_by"  # on a run closed as KILLED because its driver was gone: why


@dataclass
class DriverRecord:
    """The process that drives a run: its PID and start time (a PID alone can be reused), its host."""

    pid: int
    started: float  # psutil's create_time, seconds since the epoch
    host: str
    mlflow_run_id: str
    tracking_uri: str


def claim_run(tracker: Tracker, run_folder: str | Path) -> None:
    """Record this process as the driver of the tracker's run; a run an earlier `close_abandoned_run` closed (its
    driver was gone; this is the resumed driver) becomes RUNNING again."""
    if not tracker.enabled:
        return
    me = psutil.Process()
    record = DriverRecord(pid=me.pid, started=me.create_time(), host=socket.gethostname(),
                          mlflow_run_id=str(tracker.run_id), tracking_uri=tracker.uri)
    path = Path(run_folder) / DRIVER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    run = tracker.call(tracker.client.get_run, tracker.run_id)
    if run is not None and run.info.status != "RUNNING":
        tracker.call(tracker.client.update_run, tracker.run_id, "RUNNING")


def read_driver(run_dir: str | Path) -> DriverRecord | None:
    """The driver record of a run folder (or of the run folder of a spool folder), or None when there is none."""
    folder = Path(run_dir)
    if folder.name == SPOOL_DIR:
        folder = folder.parent
    path = folder / DRIVER_FILE
    return DriverRecord(**json.loads(path.read_text())) if path.exists() else None


def driver_alive(record: DriverRecord) -> bool:
    """Whether the recorded process still runs (on this host: the caller checks the host)."""
    try:
        return abs(psutil.Process(record.pid).create_time() - record.started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def close_abandoned_run(run_dir: str | Path, uri: str | None = None, client=None) -> str | None:
    """Mark the run of `run_dir` KILLED when it is still RUNNING and its driver process is gone; returns what it
    did (or why it could not tell), None when there was nothing to do.

    Args:
        uri: the tracking URI to use instead of the recorded one (the server moved).
        client: an ``MlflowClient`` to use.
    """
    record = read_driver(run_dir)
    if record is None:
        return None
    if record.host != socket.gethostname():
        return (f"run {record.mlflow_run_id}: its driver ran on host {record.host}, not here; whether it is still "
                "alive is not known here, so its status is left as it is")
    if driver_alive(record):
        return None
    if client is None:
        from mlflow.tracking import MlflowClient  # on first use: importing mlflow costs ~1 s
        client = MlflowClient(tracking_uri=uri or record.tracking_uri)
    if client.get_run(record.mlflow_run_id).info.status != "RUNNING":
        return None
    client.set_tag(record.mlflow_run_id, CLOSED_TAG,
                   f"spklip tracking sync: driver pid {record.pid} on {record.host} was gone")
    client.set_terminated(record.mlflow_run_id, "KILLED")
    return (f"run {record.mlflow_run_id} was RUNNING but its driver (pid {record.pid} on {record.host}) is gone: "
            "marked KILLED (`spklip train --resume` continues it)")
