"""A training run's MLflow run: opened (or reopened on resume) before the workers start, ended however the run ends.

* `open_run`: reuse the MLflow run of an earlier attempt of this Ray run (`RUN_FILE` in the run's folder), else start
  one with the config, the shard set and system metrics; a copied or moved run folder gets a new run, tagged
  `COPIED_FROM_TAG`.
* `run_closed` / `end_run`: FINISHED; KILLED on Ctrl-C or SIGTERM; FAILED otherwise, tagged `FAILURE_TAG` with the
  error's one line (`failure_line`, no password in it).
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from pathlib import Path
from typing import Iterator

import yaml

from spklip.config import ExperimentConfig, to_dict
from spklip.data import storage
from spklip.data.read import DatasetFacts
from spklip.runtime.tracking import (SPOOL_DIR, Tracker, claim_run, credentials_env, ensure_experiment, git_commit,
                                     is_remote, redact_text, shard_set_dataset, start_run)
from spklip.train.ownership import folder_location

RUN_FILE = "spklip_run.json"  # inside {storage_path}/{run_name}: the MLflow run a resumed job keeps logging to
FOLDER_TAG = "spklip.run_folder"  # on a run's MLflow run: the folder it was created in (`spklip_run.json` too)
FOLDER_ID_TAG = "spklip.run_folder_id"  # and that folder's random id
COPIED_FROM_TAG = "spklip.copied_from"  # on the new MLflow run of a copied (or moved) run folder: the original run
FAILURE_TAG = "spklip.failure"  # on a FAILED or KILLED run: why, in one line (`run_closed`)
FAILURE_TAG_MAX = 1000  # characters of that line kept


def open_run(cfg: ExperimentConfig, run_name: str, run_folder: Path, dataset: DatasetFacts,
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


def parent_run_id(storage_path: str, run_name: str) -> str | None:
    """The parent (sweep) MLflow run id the run was opened under, from its `RUN_FILE`; None for a run of its own."""
    saved = storage.join(storage_path, run_name, RUN_FILE)
    return json.loads(storage.read_text(saved)).get("parent_run_id") if storage.exists(saved) else None
