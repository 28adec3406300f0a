"""Call records sent through a live ``MlflowClient``: as they are made (`send_batch`, `send_input`, used by the
tracker) and replayed from spool files (`replay_spool_file`, `replay_folder`).

A ``call`` record (`spklip.runtime.tracking.tracker.Tracker.call_later`) keeps a typed deferred operation: a frozen
dataclass of JSON fields with a ``run(tracker)`` method, registered under a kind with `@deferred("kind")` by the
module that defines it (e.g. `spklip.runtime.model_log.LogEncoder`). Replaying rebuilds it from its kind and fields
and runs it: nothing resolves a function from a string, and whoever replays imports the modules whose operations it
may meet (``spklip tracking sync`` imports `spklip.runtime.model_log`). This module knows nothing of trackers, so
whoever replays passes `tracker_for(client, run_id)`, which builds one.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from spklip.runtime.tracking.spool import Record, read_spool_file, remove_kept_files, rewrite_spool_file
from spklip.runtime.tracking.store import server_reachable

TrackerFor = Callable[[Any, str], Any]  # (client, run id) -> the tracker a replayed ``call`` target gets


class SyncResult:
    """What `replay_folder` (`sync_spool`) sent and left, per run."""

    def __init__(self):
        self.sent: dict[str, int] = {}
        self.left: dict[str, int] = {}
        self.status: dict[str, str] = {}


# mlflow.entities is imported on first use, not at the top: it costs ~1 s, and `spklip --help` imports this.
def send_batch(client, run_id: str, record: Record) -> None:
    from mlflow.entities import Metric, Param, RunTag
    client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in record["metrics"]],
                     params=[Param(k, v) for k, v in record["params"]],
                     tags=[RunTag(k, v) for k, v in record["tags"]])


def send_input(client, run_id: str, record: Record) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag
    tags = [InputTag(k, str(v)) for k, v in record["tags"].items()]
    client.log_inputs(run_id, datasets=[DatasetInput(Dataset(**record["dataset"]), tags)])


class Deferred(Protocol):
    """A tracking operation that may run later: a frozen dataclass of JSON-valued fields, registered with
    `deferred`; ``run`` must raise on failure (use ``tracker.client``, not the tracker's swallowing methods)."""

    kind: str

    def run(self, tracker: Any) -> Any: ...


DEFERRED: dict[str, type] = {}  # kind -> the dataclass (filled by `deferred` as the defining modules are imported)
# spool records written before the operations were typed (a "module:function" target and kwargs): their kind
LEGACY_TARGETS = {"spklip.train.launcher:send_encoder": "log_encoder"}
D = TypeVar("D")


def deferred(kind: str) -> Callable[[type[D]], type[D]]:
    """Class decorator: register a frozen dataclass with a ``run(tracker)`` method as the deferred operation
    `kind` (one class per kind)."""

    def register(cls: type[D]) -> type[D]:
        if not dataclasses.is_dataclass(cls) or not callable(getattr(cls, "run", None)):
            raise TypeError(f"deferred operation {kind!r}: {cls.__name__} must be a dataclass with run(tracker)")
        if DEFERRED.get(kind, cls) is not cls:
            raise ValueError(f"deferred operation {kind!r} is already {DEFERRED[kind].__qualname__}")
        cls.kind = kind
        DEFERRED[kind] = cls
        return cls

    return register


def operation_record(op: Deferred) -> Record:
    """The spool record of `op`: its kind and fields."""
    return {"op": "call", "kind": op.kind, "fields": dataclasses.asdict(op)}


def operation_of(record: Record) -> Deferred:
    """The operation a ``call`` record keeps (also one of the older ``target`` form); a ValueError naming the kind
    when no imported module registered it."""
    kind = record.get("kind") or LEGACY_TARGETS.get(record.get("target", ""))
    cls = DEFERRED.get(kind or "")
    if cls is None:
        known = ", ".join(sorted(DEFERRED)) or "none"
        raise ValueError(f"spooled operation {kind or record.get('target')!r} is not registered in this process "
                         f"(registered: {known}); import the module that defines it before replaying")
    return cls(**record.get("fields", record.get("kwargs", {})))


def send_record(client, header: dict, record: Record, tracker_for: TrackerFor) -> None:
    """Send one spooled record to the run of its file's `header`."""
    op, run_id = record["op"], header["run_id"]
    if op == "log_batch":
        send_batch(client, run_id, record)
    elif op == "log_artifact":
        client.log_artifact(run_id, record["path"], record["artifact_path"])
    elif op == "log_input":
        send_input(client, run_id, record)
    elif op == "set_terminated":
        client.set_terminated(run_id, record["status"], record["end_time"])
    elif op == "call":  # the operation gets a tracker of the run, sharing this client
        operation_of(record).run(tracker_for(client, run_id))
    else:
        raise ValueError(f"unknown spooled call {op!r}")


def replay_spool_file(path: str | Path, client, tracker_for: TrackerFor) -> tuple[int, int]:
    """Send the records of one spool file in order; stop at the first failure (it propagates) and keep the
    unsent ones in the file. Returns ``(sent, left)``."""
    path = Path(path)
    header, records = read_spool_file(path)
    sent = 0
    try:
        for record in records:
            send_record(client, header, record, tracker_for)
            sent += 1
    finally:
        rewrite_spool_file(path, header, records[sent:])
        if sent == len(records):
            remove_kept_files(records)
    return sent, len(records) - sent


def replay_folder(folder: Path, tracker_for: TrackerFor, uri: str | None = None, client=None,
                  quiet: bool = False) -> SyncResult:
    """Send every spool file in `folder` to its run: all records by time, the final statuses last (see
    `spklip.runtime.tracking.sync_spool`)."""
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
            send_record(client_for(header), header, records[j], tracker_for)
            done.add((i, j))
            run = header["run_id"]
            result.sent[run] = result.sent.get(run, 0) + 1
            if records[j]["op"] == "set_terminated":
                result.status[run] = records[j]["status"]
    finally:
        for i, (f, header, records) in enumerate(loaded):
            unsent = [r for j, r in enumerate(records) if (i, j) not in done]
            rewrite_spool_file(f, header, unsent)
            if not unsent:
                remove_kept_files(records)
            else:
                result.left[header["run_id"]] = result.left.get(header["run_id"], 0) + len(unsent)
    if not quiet:
        for run, n in result.sent.items():
            print(f"spklip: sent {n} kept call(s) to run {run}" + (f" (status {result.status[run]})"
                  if run in result.status else ""), file=sys.stderr)
    return result
