"""MLflow tracking: local sqlite default with an explicit artifact folder, child runs, failure tolerance."""

import os
import socket

import mlflow
import pytest

from spklip.runtime.tracking import PARENT_TAG, Tracker, artifact_location, fluent_tracking_uri, resolve_uri, start_run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_uri_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri("", tmp_path) == "http://127.0.0.1:5000"
    assert resolve_uri("sqlite:////x.db", tmp_path) == "sqlite:////x.db"


def test_run_with_params_tags_metrics_artifacts_and_parent(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri("", tmp_path)
    parent = start_run(uri, "exp", tmp_path, run_name="sweep")
    run = start_run(uri, "exp", tmp_path, run_name="trial", params={"optim.lr": 1e-3, "model.layers": [1, 2]},
                    tags={"dataset_fingerprint": "abc"}, parent_run_id=parent.run_id)
    run.log_metrics({"train/loss": 2.0}, step=1)
    run.log_metrics({"train/loss": 1.5, "val/top1": 0.5}, step=2)
    run.log_text("| a |\n", "eval/table.md")
    run.terminate()
    got = run.client.get_run(run.run_id)
    assert got.data.params == {"optim.lr": "0.001", "model.layers": "[1, 2]"}
    assert got.data.tags[PARENT_TAG] == parent.run_id and got.data.tags["dataset_fingerprint"] == "abc"
    assert [m.value for m in run.client.get_metric_history(run.run_id, "train/loss")] == [2.0, 1.5]
    assert got.info.status == "FINISHED"
    exp = run.client.get_experiment(got.info.experiment_id)
    assert exp.artifact_location == artifact_location(tmp_path, "exp")  # explicit, absolute, inside run_dir
    assert (tmp_path / "mlartifacts" / "exp" / run.run_id / "artifacts" / "eval" / "table.md").exists()


def test_unreachable_server_is_reported_once_and_never_raises(tmp_path, capsys):
    tracker = start_run(f"http://127.0.0.1:{_closed_port()}", "exp", tmp_path, params={"a": 1})
    assert not tracker.enabled
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_text("x", "y.txt")
    tracker.terminate()
    err = capsys.readouterr().err
    assert err.count("MLflow tracking") == 1 and "training continues" in err


def test_failure_mid_run_disables_tracking_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri("", tmp_path)
    tracker = Tracker(uri, run_id="0" * 32)  # a run that does not exist: every call fails
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_metrics({"loss": 0.5}, step=2)
    assert not tracker.enabled
    assert capsys.readouterr().err.count("MLflow tracking") == 1


def test_disabled_tracker_does_nothing():
    tracker = Tracker("sqlite:////nonexistent/dir/mlflow.db", None)
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert tracker.call(pytest.fail, "must not be called") is None


def test_more_params_and_metrics_than_one_request_holds(tmp_path, monkeypatch):
    """Tracker hands MLflow's client one log_batch per call; the client splits it within the server's limits (100
    params/tags, 1000 metrics per request), and every value arrives."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_uri("", tmp_path)
    run = start_run(uri, "exp", tmp_path, params={f"p{i}": i for i in range(250)}, tags={"long": "x"})
    run.set_tags({f"t{i}": str(i) for i in range(150)})
    run.log_metrics({f"m{i}": float(i) for i in range(1200)}, step=3)
    got = run.client.get_run(run.run_id)
    assert run.enabled and got.data.params == {f"p{i}": str(i) for i in range(250)}
    assert all(got.data.tags[f"t{i}"] == str(i) for i in range(150))
    assert got.data.metrics == {f"m{i}": float(i) for i in range(1200)}


@pytest.mark.parametrize("before", [None, "http://127.0.0.1:5000"])
def test_fluent_tracking_uri_puts_the_environment_back(tmp_path, monkeypatch, before):
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    uri = resolve_uri("sqlite:///" + str(tmp_path / "x.db"), tmp_path)
    with fluent_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_an_experiment_created_meanwhile_is_used_not_a_reason_to_stop_tracking(tmp_path):
    """Between the lookup and the create, another process (a second trial on a fresh store) or MLflow's own retry
    of a slow create made the experiment: its id is used and tracking stays on (it was turned off, one line on
    stderr, and the run trained untracked)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    from spklip.runtime.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "pending")  # as start_run makes it, before its run exists
    real = tracker.client
    made = real.create_experiment("raced")

    class Racing:  # sees no experiment, then finds it taken when creating it
        def get_experiment_by_name(self, name):
            self.get_experiment_by_name = real.get_experiment_by_name
            return None

        def create_experiment(self, *args, **kwargs):
            raise MlflowException("already exists", error_code=RESOURCE_ALREADY_EXISTS)

    tracker._client = Racing()
    assert ensure_experiment(tracker, "raced", tmp_path) == made and tracker.enabled
