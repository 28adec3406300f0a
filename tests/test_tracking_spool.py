"""Tracker loss (issue 10): a real ``mlflow server`` killed mid-run and brought back on the same port and store; what
could not be sent is kept in the run folder's spool and replayed (automatically or by ``spklip tracking sync``)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from spklip.runtime import tracking
from spklip.cli import main
from spklip.runtime.tracking import SPOOL_DIR, Tracker, start_run, sync_spool
from spklip.runtime.tracking import tracker as tracker_module

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on a loopback port, started in its own process group and stopped by that group's id."""

    def __init__(self, store: Path, port: int):
        self.store, self.port, self.proc = store, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.store / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.store / "server.log").read_text()[-2000:]
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server on {self.uri} did not come up")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group: the server and its uvicorn worker
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server answers at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setattr(tracker_module, "BACKOFF_S", (0.2, 1.0))  # where Tracker reads it
    (tmp_path / "store").mkdir()
    srv = Server(tmp_path / "store", _free_port())
    srv.start()
    yield srv
    srv.kill()


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_server_killed_mid_run_then_back_loses_nothing(server, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r1"
    tracker = start_run(server.uri, "exp", tmp_path / "runs", run_name="r1", params={"a": 1},
                        spool_dir=run_dir / SPOOL_DIR)
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step}, step)
    server.kill()
    for step in range(6, 12):  # the first failure turns the tracker offline; the rest go straight to the spool
        tracker.log_metrics({"train/loss": 1.0 / step}, step)
    tracker.log_text("| table |\n", "eval/table.md")
    tracker.set_tags({"late": "yes"})
    assert tracker.enabled and tracker.offline
    tracker.terminate("FINISHED")  # still gone: the status is kept too
    err = capsys.readouterr().err
    assert "spklip tracking sync" in err and "failed" not in err
    kept = list((run_dir / SPOOL_DIR).glob("*.jsonl"))
    assert len(kept) == 1 and len(kept[0].read_text().splitlines()) == 1 + 6 + 1 + 1 + 1

    assert main(["tracking", "sync", str(run_dir)]) == 2  # server still down: one line, nothing lost
    assert "unreachable" in capsys.readouterr().err and kept[0].exists()

    server.start()
    assert main(["tracking", "sync", str(run_dir)]) == 0
    assert "status FINISHED" in capsys.readouterr().err
    client = tracker.client
    run = client.get_run(tracker.run_id)
    assert _steps(client, tracker.run_id, "train/loss") == list(range(1, 12))
    assert run.info.status == "FINISHED" and run.data.tags["late"] == "yes"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "eval")] == ["eval/table.md"]
    assert not list((run_dir / SPOOL_DIR).glob("*.jsonl"))  # all sent: the spool is empty
    assert main(["tracking", "sync", str(run_dir)]) == 0  # nothing left to send is not an error


@pytest.mark.slow
def test_offline_tracker_replays_by_itself_when_the_server_is_back(server, tmp_path):
    """Back-off, then the next log call finds the server back and sends the spool first; a worker's spool (a
    tracker given no folder) is adopted by the driver's tracker and sent at the end; the status is FINISHED."""
    run_dir = tmp_path / "runs" / "r2"
    driver = start_run(server.uri, "exp", tmp_path / "runs", run_name="r2", spool_dir=run_dir / SPOOL_DIR)
    os.environ[tracking.SPOOL_ENV] = str(tmp_path / "default_spool")
    try:
        worker = Tracker(server.uri, driver.run_id)  # like rank 0 today: no spool folder given
        worker.log_metrics({"m": 0.0}, 0)
        server.kill()
        worker.log_metrics({"m": 1.0}, 1)
        worker.log_metrics({"m": 2.0}, 2)
        assert worker.offline and len(worker.spool) == 2
        server.start()
        time.sleep(1.1)  # past the back-off
        worker.log_metrics({"m": 3.0}, 3)
        assert not worker.offline and not worker.spool.path.exists()
        server.kill()
        worker.log_metrics({"m": 4.0}, 4)  # offline again, spooled under the default folder
        assert worker.spool.path.parent == tmp_path / "default_spool" / driver.run_id
        server.start()
        assert driver.adopt(tracking.default_spool_dir(driver.run_id)) == 1
        driver.terminate("FINISHED")
    finally:
        os.environ.pop(tracking.SPOOL_ENV)
    assert _steps(driver.client, driver.run_id, "m") == [0, 1, 2, 3, 4]
    assert driver.client.get_run(driver.run_id).info.status == "FINISHED"
    assert not list((run_dir / SPOOL_DIR).glob("*.jsonl"))


def test_sync_sends_statuses_last_and_keeps_what_failed(tmp_path, monkeypatch):
    """Across files the final status goes after every metric; a call that fails stays in its file."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = start_run(uri, "exp", tmp_path)
    folder = tmp_path / "run" / SPOOL_DIR
    a, b = tracking.Spool(folder, uri, run.run_id), tracking.Spool(folder, uri, run.run_id)
    a.append({"op": "set_terminated", "status": "FAILED", "end_time": 1})
    b.append({"op": "log_batch", "metrics": [["x", 1.0, 5, 1]], "params": [], "tags": []})
    b.append({"op": "nonsense"})
    with pytest.raises(ValueError, match="nonsense"):
        sync_spool(tmp_path / "run")
    header, left = tracking.read_spool_file(b.path)
    assert header["run_id"] == run.run_id and left[0]["op"] == "nonsense" and len(left) == 1
    assert _steps(run.client, run.run_id, "x") == [1]
    assert json.loads(a.path.read_text().splitlines()[1])["status"] == "FAILED"  # not sent: it comes last
