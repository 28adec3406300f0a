"""Secrets (issue 28): a password inside a tracking URI never reaches what a run prints, stores or logs; Ray's session
folder and the files a run writes are private."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from spklip.runtime.rayenv import PRIVATE_TEMP, SOCKET_PATH_MAX, _SOCKET_TAIL, private_temp_dir
from spklip.runtime.tracking.store import (PASSWORD_ENV, USERNAME_ENV, adopt_credentials, redact_text, redact_uri,
                                   resolve_uri)
from test_train_fixtures import write_motion_shards

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Pw-s3cr3t-9f2c"  # what must appear nowhere


@pytest.fixture
def clean_env(monkeypatch):
    """No MLflow credentials or URI from outside; whatever a test sets is undone after it."""
    for k in (USERNAME_ENV, PASSWORD_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(k, "x")  # recorded, so that the teardown removes what the code under test sets
        monkeypatch.delenv(k)
    return monkeypatch


def test_credentials_move_from_the_uri_to_mlflow_environment(clean_env, tmp_path):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:5000/"
    assert resolve_uri(uri, tmp_path) == "http://127.0.0.1:5000/"
    assert os.environ[USERNAME_ENV] == "alice" and os.environ[PASSWORD_ENV] == PASSWORD
    assert redact_uri("https://bob:p%40ss@h:1/x?y=1") == "https://h:1/x?y=1"
    assert adopt_credentials("https://bob:p%40ss@h:1/") == "https://h:1/" and os.environ[PASSWORD_ENV] == "p@ss"
    assert redact_text(f"cannot reach {uri}: refused") == "cannot reach http://***@127.0.0.1:5000/: refused"
    assert redact_uri("sqlite:////a/mlflow.db") == "sqlite:////a/mlflow.db"  # nothing to take out


def test_mlflow_tracking_uri_is_rewritten_and_lends_its_credentials_to_the_same_server(clean_env, tmp_path):
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://carol:{PASSWORD}@10.0.0.1:5000")
    assert resolve_uri("", tmp_path) == "http://10.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000" and os.environ[PASSWORD_ENV] == PASSWORD
    clean_env.delenv(PASSWORD_ENV)
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://carol:{PASSWORD}@10.0.0.1:5000")
    assert resolve_uri("http://10.0.0.1:5000", tmp_path) == "http://10.0.0.1:5000"  # a resumed run's stored URI
    assert os.environ[PASSWORD_ENV] == PASSWORD


def test_a_password_inside_a_database_uri_is_refused(clean_env, tmp_path):
    with pytest.raises(ValueError, match="PGPASSWORD") as e:
        resolve_uri(f"postgresql://dave:{PASSWORD}@db/mlflow", tmp_path)
    assert PASSWORD not in str(e.value) and "postgresql://dave@db/mlflow" in str(e.value)
    assert resolve_uri("postgresql://dave@db/mlflow", tmp_path) == "postgresql://dave@db/mlflow"  # no secret in it


def test_an_error_line_never_shows_a_password(capsys):
    from spklip.cli import main

    assert main(["eval", "--model", "models:/x@best", "--tracking-uri", f"postgresql://u:{PASSWORD}@db/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and PASSWORD not in err


def test_ray_gets_a_private_temp_folder_under_the_run_folder_or_in_tmp(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))
    try:
        temp = private_temp_dir(short / "r")
        assert temp == short.resolve() / "r" / PRIVATE_TEMP / "ray"
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(short)
    deep = tmp_path / ("d" * 60) / "run"  # Ray's sockets would not fit under it: a private folder in /tmp instead
    temp = private_temp_dir(deep)
    try:
        assert not deep.exists() and temp.parent.parent == Path("/tmp") and temp.parent.name.startswith("spklip-ray-")
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700
        assert len(str(temp.parent)) + len(_SOCKET_TAIL) <= SOCKET_PATH_MAX
    finally:
        shutil.rmtree(temp.parent)


def _files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


@pytest.mark.slow
def test_a_run_with_a_password_in_its_tracking_uri_leaves_it_nowhere(tmp_path):
    """`spklip train` (one Ray Train worker) with ``tracking.uri=http://alice:PW@<nothing listens>/``: the password
    is in no file the run leaves (run folder, checkpoints, Ray's session folder, logs), not on stdout or stderr;
    the run folder, Ray's private temp folder and every file spklip wrote are the user's alone."""
    data = write_motion_shards(tmp_path / "motion", per_class=6, val_per_class=2, test_per_class=1)
    runs = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))  # short: Ray's session folder fits in the run folder
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", USERNAME_ENV,
                                                                  PASSWORD_ENV)}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        run = subprocess.run(
            [sys.executable, "-m", "spklip.cli", "train", "--config", "configs/tiny.yaml", "--name", "s",
             "--set", f"data.path={data}", "--set", f"train.run_dir={runs / 'runs'}", "--set", "scale.num_workers=1",
             "--set", "scale.cpus_per_worker=0.5",  # a Ray Train worker: Ray's runtime-env agent logs its env
             "--set", "train.epochs=1", "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]",
             "--set", "eval.few_shot_steps=2", "--set", "eval.energy=false",
             "--set", f"tracking.uri=http://alice:{PASSWORD}@127.0.0.1:9/"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "MLflow tracking at http://127.0.0.1:9/ failed" in run.stderr  # the URI is named, without them
        assert PASSWORD not in run.stdout and PASSWORD not in run.stderr and "alice" not in run.stderr
        folder = runs / "runs" / "ray" / "s"
        assert list(folder.glob("checkpoint_step=*/state.pt")) and (folder / PRIVATE_TEMP / "ray").is_dir()
        leaked = [p for p in _files(runs) if p.is_file() and not p.is_symlink()
                  and PASSWORD.encode() in p.read_bytes()]
        assert not leaked, leaked
        assert stat.S_IMODE((folder / PRIVATE_TEMP).stat().st_mode) == 0o700
        ray_temp = folder / PRIVATE_TEMP / "ray"
        open_to_others = [p for p in _files(runs) if not p.is_symlink() and ray_temp not in p.parents
                          and p != ray_temp and stat.S_IMODE(p.lstat().st_mode) & 0o077]
        assert not open_to_others, [(str(p), oct(p.lstat().st_mode)) for p in open_to_others]
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def auth_server(tmp_path):
    """An MLflow server that demands basic authentication (its ``basic-auth`` app; user ``admin``, password
    `PASSWORD`), its files in ``tmp_path/server``; yields its URI without credentials."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = _free_port()
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"],
                              cwd=folder, env=env, stdout=(folder / "server.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (folder / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_credentials_in_mlflow_tracking_uri_authenticate_and_are_stored_nowhere(auth_server, tmp_path, clean_env):
    """``MLFLOW_TRACKING_URI=http://admin:PW@host/`` against a server that refuses requests without them: the run
    logs its params, metrics and model (the credentials reached MLflow through its environment, in the driver and
    the worker), and the password is in none of the run's files, the server's store, the artifacts, the output."""
    from mlflow.tracking import MlflowClient

    data = write_motion_shards(tmp_path / "motion", per_class=6, val_per_class=2, test_per_class=1)
    runs = tmp_path / "runs"
    host = auth_server.split("://", 1)[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", USERNAME_ENV, PASSWORD_ENV)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT),
               MLFLOW_TRACKING_URI=f"http://admin:{PASSWORD}@{host}")
    run = subprocess.run(
        [sys.executable, "-m", "spklip.cli", "train", "--config", "configs/tiny.yaml", "--name", "a",
         "--set", f"data.path={data}", "--set", f"train.run_dir={runs}", "--set", "scale.num_workers=0",
         "--set", "train.epochs=1", "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]",
         "--set", "eval.few_shot_steps=2", "--set", "eval.energy=false", "--set", "tracking.system_metrics=false",
         "--set", "train.log_every=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["mlflow_run_id"] and summary["model_uri"], run.stderr[-3000:]
    clean_env.setenv(USERNAME_ENV, "admin")
    clean_env.setenv(PASSWORD_ENV, PASSWORD)
    logged = MlflowClient(tracking_uri=auth_server).get_run(summary["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.data.params["tracking.uri"] == auth_server
    assert "train/loss" in logged.data.metrics  # logged by the worker (rank 0), with the credentials too
    assert PASSWORD not in run.stdout and PASSWORD not in run.stderr
    leaked = [p for root in (runs, tmp_path / "server") for p in _files(root)
              if p.is_file() and not p.is_symlink() and PASSWORD.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert list((runs / "mlartifacts").rglob("*.safetensors"))  # the logged model was among what was searched
