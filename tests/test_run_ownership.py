"""One driver per run (issue 28): a run or sweep folder is locked by its driver, names stay inside their folder, and
a copied run folder resumed elsewhere does not write into the original's MLflow run."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spklip.cli import main
from spklip.config import load_config
from spklip.runtime import mlflow_run, plan
from spklip.train.ownership import LOCK_FILE, RunInUseError, check_name, lock_folder, release_folder
from test_train_fixtures import write_motion_shards

ROOT = Path(__file__).resolve().parents[1]
BAD_NAMES = ["", "a/b", "../up", "..", ".", ".hidden", "-x", "a\\b", "a..b", "tab\tname", "new\nline", "x" * 201,
             "/abs", "~", "sp ace", "dé"]
GOOD_NAMES = ["cli", "spklip-tiny-20261205-091445", "train-trial_id=a1b2c3d4_00001-seed=0", "v1.2", "x" * 200]

# Holds the lock of a folder from another process until killed: a second driver, as far as the lock can tell
HOLDER = r"""
import sys, time
from spklip.train.ownership import lock_folder
lock_folder(sys.argv[1], "run held")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_motion_shards(tmp_path_factory.mktemp("data") / "motion", per_class=6, val_per_class=2)


@pytest.fixture
def holder():
    """Start a process that locks a folder; yields (start(folder) -> pid); kills what it started."""
    started = []

    def start(folder: Path) -> int:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        started.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p.pid

    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_plain_folder_names_pass(name):
    assert check_name(name) == name


def _exit_code(argv: list[str]) -> int:
    """`main`'s exit code, also when argparse refuses a flag's value (it exits)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_train_refuses_a_name_that_is_not_one_plain_folder(name, tmp_path, capsys, no_ray):
    assert _exit_code(["train", "--name", name, "--set", f"train.run_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spklip: error: ") and "--name" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing made, nothing started


@pytest.mark.parametrize("name", ["../up", "a/b", "", "x" * 300, ".hidden", "a..b", "-x"])
def test_a_sweep_refuses_such_a_name_too(name, tmp_path, capsys):
    assert _exit_code(["sweep", "fsve-sweep", "--smoke-test", "--name", name,
                       "--set", f"train.run_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "--name" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # refused before the smoke data is built


def test_tracking_run_name_is_held_to_the_same_rule(shards, tmp_path, no_ray):
    cfg = load_config(overrides=[f"data.path={shards}", f"train.run_dir={tmp_path / 'runs'}",
                                 "tracking.run_name=../../escape"])
    with pytest.raises(ValueError, match="tracking.run_name"):
        plan.prepare_run(plan.RunSpec(cfg))
    assert not (tmp_path / "runs").exists()


def test_the_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path, holder):
    folder = tmp_path / "run"
    pid = holder(folder)
    with pytest.raises(RunInUseError, match=rf"^run x is in use by another driver \(pid {pid}\)$"):
        lock_folder(folder, "run x")
    os.kill(pid, signal.SIGKILL)  # a driver killed with SIGKILL leaves no stale lock behind
    os.waitpid(pid, 0)
    lock_folder(folder, "run x")
    try:
        lock_folder(folder, "run x")  # the holder itself may take it again (a second fit in one process)
        assert oct((folder / LOCK_FILE).stat().st_mode & 0o777) == oct(0o600)
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        assert release_folder(folder)
    assert not release_folder(folder)


def test_a_second_train_driver_of_a_run_exits_2_before_writing_anything(shards, tmp_path, holder, capsys, no_ray):
    runs = tmp_path / "runs"
    pid = holder(runs / "ray" / "same")
    assert main(["train", "--name", "same", "--set", f"data.path={shards}", "--set", f"train.run_dir={runs}",
                 "--set", "scale.num_workers=0"]) == 2
    err = capsys.readouterr().err
    assert err == f"spklip: error: run same is in use by another driver (pid {pid})\n"
    assert sorted(p.name for p in (runs / "ray" / "same").iterdir()) == [LOCK_FILE]  # no config, no MLflow run
    assert not (runs / "mlflow.db").exists()


def test_a_second_sweep_driver_exits_2(tmp_path, holder, capsys):
    runs = tmp_path / "runs"
    pid = holder(runs / "sweeps" / "mine")
    assert main(["sweep", "fsve-sweep", "--name", "mine", "--set", f"train.run_dir={runs}"]) == 2
    err = capsys.readouterr().err
    assert err == f"spklip: error: sweep mine is in use by another driver (pid {pid})\n"
    assert sorted(p.name for p in (runs / "sweeps" / "mine").iterdir()) == [LOCK_FILE]


def test_a_copied_run_folder_resumed_elsewhere_logs_to_a_new_mlflow_run(shards, tmp_path, capsys, no_ray):
    """`prepare_run` of a run, then of a copy of its folder under another storage root: the copy gets a new MLflow
    run tagged with the original's id, the original's run file is untouched, and resuming the original in place
    still reopens the original run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(overrides=[f"data.path={shards}", f"train.run_dir={tmp_path / 'runs'}", f"tracking.uri={uri}",
                                 "tracking.system_metrics=false"])
    first = plan.prepare_run(plan.RunSpec(cfg, run_name="orig", storage_path=str(tmp_path / "a")))
    first.tracker.terminate("KILLED")
    original = first.tracker.run_id
    record = json.loads((tmp_path / "a" / "orig" / mlflow_run.RUN_FILE).read_text())
    assert record["run_folder"] == os.path.realpath(tmp_path / "a" / "orig") and len(record["run_folder_id"]) == 32
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_run(original).data.tags
    assert tags[mlflow_run.FOLDER_TAG] == record["run_folder"] and tags[mlflow_run.FOLDER_ID_TAG] == record["run_folder_id"]

    shutil.copytree(tmp_path / "a" / "orig", tmp_path / "b" / "orig")
    capsys.readouterr()
    copy = plan.prepare_run(plan.RunSpec(cfg, run_name="orig", storage_path=str(tmp_path / "b")))
    copy.tracker.terminate("FINISHED")
    err = capsys.readouterr().err
    assert copy.tracker.run_id != original
    assert f"was created as {record['run_folder']}" in err and f"{mlflow_run.COPIED_FROM_TAG}={original}" in err
    assert client.get_run(copy.tracker.run_id).data.tags[mlflow_run.COPIED_FROM_TAG] == original
    moved = json.loads((tmp_path / "b" / "orig" / mlflow_run.RUN_FILE).read_text())
    assert moved["mlflow_run_id"] == copy.tracker.run_id
    assert moved["run_folder"] == os.path.realpath(tmp_path / "b" / "orig")
    assert json.loads((tmp_path / "a" / "orig" / mlflow_run.RUN_FILE).read_text()) == record
    assert client.get_run(original).info.status == "KILLED"  # nothing of the copy's went to the original run

    again = plan.prepare_run(plan.RunSpec(cfg, run_name="orig", storage_path=str(tmp_path / "a")))  # the original, resumed
    again.tracker.terminate("FINISHED")
    assert again.tracker.run_id == original and "was created as" not in capsys.readouterr().err
    for folder in (tmp_path / "a" / "orig", tmp_path / "b" / "orig"):
        release_folder(folder)
