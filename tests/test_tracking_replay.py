"""Replaying a spooled ``call`` record (what `Tracker.call_later` keeps while the server is away): the typed
operation gets a tracker of the spool file's run, sharing the replaying client, whether `sync_spool` or the tracker
itself (back online) replays it. A local sqlite store, no server."""

from dataclasses import dataclass

import pytest

from spklip.runtime.tracking import (EXPERIMENT_KIND_TAG, SPOOL_DIR, TRAINING_KIND, Spool, deferred, ensure_experiment,
                             start_run, sync_spool)
from spklip.runtime.tracking.replay import LEGACY_TARGETS, operation_of, operation_record


@deferred("test_make_experiment")
@dataclass(frozen=True)
class MakeExperiment:
    """An operation that takes a tracker and leaves a trace in the store."""

    experiment: str
    run_dir: str

    def run(self, tracker):
        return ensure_experiment(tracker, self.experiment, self.run_dir)


def _call(run_dir) -> dict:
    return operation_record(MakeExperiment("made-by-replay", str(run_dir)))


def _made_by_replay(tracker) -> bool:
    exp = tracker.client.get_experiment_by_name("made-by-replay")
    return exp is not None and exp.tags.get(EXPERIMENT_KIND_TAG) == TRAINING_KIND


def test_sync_spool_replays_a_call_record(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run(uri, "exp", tmp_path, run_name="r")
    folder = tmp_path / "r" / SPOOL_DIR
    Spool(folder, uri, tracker.run_id).append(_call(tmp_path))
    assert not _made_by_replay(tracker)
    result = sync_spool(tmp_path / "r", quiet=True)
    assert result.sent == {tracker.run_id: 1} and not result.left
    assert _made_by_replay(tracker)
    assert not list(folder.glob("*.jsonl"))  # sent: the file is gone


def test_tracker_back_online_replays_its_call_record(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run(uri, "exp", tmp_path, run_name="r", spool_dir=tmp_path / "r" / SPOOL_DIR)
    tracker.spool.append(_call(tmp_path))
    tracker._offline = True  # as after a lost server, with the back-off over
    tracker.log_metrics({"m": 1.0}, step=1)  # the next call finds the store answering: the spool goes first
    assert not tracker.offline and _made_by_replay(tracker)
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "m")] == [1.0]
    assert not tracker.spool.path.exists()
    tracker.terminate()


def test_a_tracker_without_a_run_folder_sends_its_default_spool_at_the_end(tmp_path, monkeypatch):
    """A tracker given no spool folder keeps its calls under SPKLIP_TRACKING_SPOOL/<run id> (not a folder named
    tracking_spool); the end of the run must still send them."""
    from spklip.runtime.tracking import SPOOL_ENV

    monkeypatch.setenv(SPOOL_ENV, str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = start_run(uri, "exp", tmp_path, run_name="r")
    tracker.spool.append(_call(tmp_path))
    tracker._offline = True
    tracker.terminate()  # back online at the end: what was kept goes first, then the status
    assert _made_by_replay(tracker) and not tracker.spool.path.exists()
    assert tracker.client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_record_is_its_kind_and_fields_and_an_unknown_kind_is_one_clear_error():
    record = _call("/r")
    assert record == {"op": "call", "kind": "test_make_experiment",
                      "fields": {"experiment": "made-by-replay", "run_dir": "/r"}}
    assert operation_of(record) == MakeExperiment("made-by-replay", "/r")
    with pytest.raises(ValueError, match="'no_such_op' is not registered in this process"):
        operation_of({"op": "call", "kind": "no_such_op", "fields": {}})


def test_a_record_of_the_older_target_form_is_read_as_its_operation():
    from spklip.runtime.model_log import LogEncoder

    (target, kind), = LEGACY_TARGETS.items()
    old = {"op": "call", "target": target, "kwargs": {"checkpoint": "/ckpt", "register_as": "m"}}
    assert kind == LogEncoder.kind and operation_of(old) == LogEncoder("/ckpt", "m")
