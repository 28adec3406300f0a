"""Every failure path closes its run, fast and in one line (issue 28): an error after the MLflow run opened ends it
FAILED with the reason (`spklip.failure`); Ctrl-C ends it KILLED, prints ``spklip: interrupted`` and exits 130; a
worker group the cluster cannot hold is refused before waiting; what every worker would fail on (a model that
cannot be built, a corrupted checkpoint on ``--resume``) is found on the driver, once; one name check for
``--name``."""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from spklip.cli import main
from spklip.cliargs import check_name, folder_name
from spklip.runtime.rayenv import Capacity, resource_shortfall
from spklip.runtime import launcher, mlflow_run
from spklip.train.ownership import check_name as ownership_check_name
from spklip.runtime.worker import FAIL_FAST, ray_resume_checkpoint
from test_train_fixtures import write_motion_shards

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
         "--set", "eval.energy=false", "--set", "tracking.system_metrics=false"]


def _train_args(data, runs, name, *extra):
    return ["train", "--config", "configs/tiny.yaml", "--name", name, "--set", f"data.path={data}",
            "--set", f"train.run_dir={runs}", *QUICK, *extra]


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse refusing a flag's value
        return int(e.code)


def _run(runs, name):
    """The MLflow run of run `name` under `runs` (its id from the run file), read from the sqlite store."""
    from mlflow.tracking import MlflowClient

    run_id = json.loads((runs / "ray" / name / mlflow_run.RUN_FILE).read_text())["mlflow_run_id"]
    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}").get_run(run_id)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("spklip: error:")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_motion_shards(tmp_path_factory.mktemp("data") / "motion", per_class=8, val_per_class=2,
                               test_per_class=2)


@pytest.fixture
def alarm():
    """Fail a test that would hang (the behaviour being fixed) instead of waiting for ever: SIGALRM after N s."""
    def on_alarm(signum, frame):
        raise TimeoutError("still waiting: the request hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    yield signal.alarm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---- one name check ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a/b", "../up", "..", ".", ".hidden", "-x", "a..b", "sp ace", "dé", "x" * 201,
                                  "new\nline"])
def test_the_name_flag_and_the_name_check_are_one_rule(name):
    with pytest.raises(ValueError):
        check_name(name)
    with pytest.raises(argparse.ArgumentTypeError):  # `.hidden`, `a..b`, `-x`, `sp ace`, `dé` passed here before
        folder_name(200, "a run name")(name)
    assert ownership_check_name is check_name


def test_a_bad_name_stops_at_parsing_in_one_line(tmp_path, capsys):
    assert _exit_code(["train", "--name", "a..b", "--set", f"train.run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spklip: error: argument --name: a run name 'a..b': a name is one folder name")
    assert err.count("\n") == 1


# ---- resources -------------------------------------------------------------------------------------------------

def test_resource_shortfall_counts_the_total_each_node_and_gpus():
    one = Capacity(({"CPU": 2.0, "memory": 1e9},))
    assert resource_shortfall({"CPU": 0.5}, 4, one) is None
    assert resource_shortfall({"CPU": 64.0}, 1, one) == "1 worker(s) x 64 CPU = 64 CPU, but the cluster has 2 CPU"
    assert resource_shortfall({"CPU": 1.0, "GPU": 1.0}, 1, one).endswith("but the cluster has 0 GPU")
    two = Capacity(({"CPU": 3.0}, {"CPU": 3.0}))  # 6 CPUs in all, but a 2-CPU worker fits only once on each node
    assert resource_shortfall({"CPU": 2.0}, 2, two) is None
    why = resource_shortfall({"CPU": 2.0}, 3, two)
    assert why.startswith("3 worker(s) of 2 CPU each, but the cluster's 2 node(s) hold 2 such worker(s)"), why
    assert resource_shortfall({"CPU": 4.0}, 1, two).startswith("1 worker(s) of 4 CPU each")
    grows = Capacity(({"CPU": 100.0},), autoscaling=True)  # an autoscaler's maximum: only the total is known
    assert resource_shortfall({"CPU": 8.0}, 4, grows) is None
    assert "may grow to 100 CPU" in resource_shortfall({"CPU": 8.0}, 20, grows)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [["--set", "scale.cpus_per_worker=64"], ["--set", "scale.num_workers=3", "--set", "scale.cpus_per_worker=1"],
                                   ["--set", "scale.use_gpu=true"]])
def test_more_than_the_cluster_has_is_refused_before_waiting(scale, ray_session, shards, tmp_path, capsys, alarm):
    """The session's Ray has 2 CPUs and no GPU: a worker of 64 CPUs, 3 workers of 1 CPU or a GPU
    worker waited for ever before (ignoring Ctrl-C); now one line, exit 2, the run FAILED with the reason."""
    if scale[-1].endswith("use_gpu=true") and ray_session.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this Ray has a GPU")
    runs = tmp_path / "runs"
    alarm(120)
    started = time.monotonic()
    assert main(_train_args(shards, runs, "big", "--set", "scale.num_workers=1", *scale)) == 2
    assert time.monotonic() - started < 100
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith("spklip: error: scale asks for "), errors
    assert "(in-process Ray): lower scale.num_workers or scale.cpus_per_worker" in errors[0]
    run = _run(runs, "big")
    assert run.info.status == "FAILED" and run.data.tags[mlflow_run.FAILURE_TAG] == errors[0][len("spklip: error: "):]


# ---- errors after the MLflow run opened ------------------------------------------------------------------------

def _flip_in_a_page(file: Path) -> None:
    """Flip one byte inside the ``spikes`` column's first page (the footer stays readable)."""
    import pyarrow.parquet as pq

    chunk = pq.read_metadata(file).row_group(0).column(1)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    end = chunk.data_page_offset if chunk.has_dictionary_page else start + chunk.total_compressed_size
    data = bytearray(file.read_bytes())
    data[(start + end) // 2] ^= 0x5A
    file.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_shard_corrupted_in_the_trainer_setup_fails_the_run_with_the_reason(ray_session, tmp_path, capsys):
    """The footers read fine (the checks before the MLflow run pass); the page fails when the driver decodes the
    training split for Ray Train: the run was left RUNNING before."""
    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    meta = json.loads((data / "manifest.json").read_text())
    bad = data / meta["shards"]["train"][0]
    _flip_in_a_page(bad)
    runs = tmp_path / "runs"
    assert main(_train_args(data, runs, "bad", "--set", "scale.num_workers=1")) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and str(bad) in errors[0], errors
    run = _run(runs, "bad")
    assert run.info.status == "FAILED" and str(bad) in run.data.tags[mlflow_run.FAILURE_TAG]


@pytest.mark.slow
def test_an_error_while_finishing_fails_the_run(ray_session, shards, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the test split went away\nsecond line")

    monkeypatch.setattr(launcher, "evaluate_on_test", broken)
    runs = tmp_path / "runs"
    assert main(_train_args(shards, runs, "fin", "--set", "scale.num_workers=0", "--set", "train.epochs=1")) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and "RuntimeError: the test split went away" in errors[0], errors
    run = _run(runs, "fin")
    assert run.info.status == "FAILED"  # was FINISHED or RUNNING, depending on where _finish failed
    assert run.data.tags[mlflow_run.FAILURE_TAG] == "RuntimeError: the test split went away"


def test_end_run_maps_each_way_out_to_its_status():
    calls = []
    tracker = SimpleNamespace(set_tags=lambda tags: calls.append(tags), terminate=lambda status: calls.append(status))
    for error, status, line in [(None, "FINISHED", None), (KeyboardInterrupt(), "KILLED", "interrupted"),
                                (SystemExit(15), "KILLED", "interrupted"),
                                (ValueError("x.yaml: bad\nmore"), "FAILED", "x.yaml: bad"),
                                (RuntimeError("http://u:pw@h/ down"), "FAILED", "RuntimeError: http://***@h/ down")]:
        calls.clear()
        with pytest.raises(type(error)) if error is not None else contextlib.nullcontext():
            with mlflow_run.run_closed(tracker):
                if error is not None:
                    raise error
        assert calls == ([{mlflow_run.FAILURE_TAG: line}] if line else []) + [status]


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------

def test_ctrl_c_in_ray_trains_wait_aborts_the_controller_and_raises_keyboard_interrupt():
    aborted = []
    controller = SimpleNamespace(abort=SimpleNamespace(remote=lambda: aborted.append(True)))
    previous = signal.getsignal(signal.SIGINT)
    try:
        launcher.SpklipTrainer._register_sigint_handler(None, controller)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert aborted == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C: Python's own
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """``spklip train`` (one Ray Train worker, the smoke data) in its own process group, sent SIGINT (a terminal's
    Ctrl-C goes to the whole group) once its first epoch line is out: ``(process, stderr, runs)``."""
    from spklip.data.smoke import build_smoke_data

    tmp = tmp_path_factory.mktemp("sigint")
    data, runs = build_smoke_data(tmp / "smoke"), tmp / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "spklip.cli", *_train_args(data, runs, "int", "--set", "scale.num_workers=1",
                                                            "--set", "train.epochs=200",
                                                            "--set", "train.checkpoint_every=2")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("epoch ") for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no epoch line after 300 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=120)
        proc.seconds = time.monotonic() - sent
        reader.join(timeout=10)
        yield proc, "".join(lines), runs
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_ctrl_c_during_train_exits_130_with_one_line_and_a_killed_run(interrupted):
    proc, err, runs = interrupted
    assert proc.returncode == 130, err[-3000:]
    assert "spklip: interrupted\n" in err and "Traceback" not in err, err[-3000:]
    assert not _errors(err)
    assert proc.seconds < 60
    run = _run(runs, "int")
    assert run.info.status == "KILLED" and run.data.tags[mlflow_run.FAILURE_TAG] == "interrupted"


# ---- deterministic worker errors, found on the driver -----------------------------------------------------------

@pytest.mark.slow
def test_a_corrupted_checkpoint_on_resume_is_one_line_before_any_worker(interrupted, capsys, no_ray):
    """The interrupted run's latest checkpoint, as Ray's own snapshot names it, corrupted: ``--resume`` stops on
    the driver, naming the file (before: each of 1 + max_failures worker groups failed on it, WorkerGroupError)."""
    _, _, runs = interrupted
    folder = runs / "ray" / "int"
    latest = ray_resume_checkpoint(folder)
    assert latest is not None and (Path(latest) / "state.pt").exists(), sorted(p.name for p in folder.iterdir())
    state = Path(latest) / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x5A
    state.write_bytes(bytes(data))
    assert main(["train", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    errors = _errors(err)
    assert len(errors) == 1 and errors[0].startswith(f"spklip: error: {state}: corrupted checkpoint"), err[-2000:]
    assert "WorkerGroupError" not in err


def test_a_missing_pretrained_text_model_is_one_line_before_ray_or_mlflow(shards, tmp_path, capsys, no_ray):
    runs = tmp_path / "runs"
    missing = tmp_path / "no-such-model"
    assert main(_train_args(shards, runs, "txt", "--set", "scale.num_workers=1", "--set", "model.text.kind=hf",
                            "--set", f"model.text.pretrained={missing}")) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"spklip: error: model.text.pretrained='{missing}': cannot load")
    assert not (runs / "mlflow.db").exists()  # refused before the MLflow run opened (and before Ray started)


def test_ray_resume_checkpoint_reads_rays_snapshot(tmp_path):
    assert ray_resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_step=0000004", "metrics": {}}}))
    assert ray_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint_step=0000004")
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("not json")
    assert ray_resume_checkpoint(tmp_path) is None


def test_checkpoint_and_model_errors_are_never_retried():
    from spklip.train.checkpoint import CheckpointError
    from spklip.runtime.worker import ModelError, fail_fast_error_in

    assert CheckpointError in FAIL_FAST and ModelError in FAIL_FAST
    wrapper = RuntimeError("WorkerGroupError: worker 0 failed")
    wrapper.worker_failures = {0: CheckpointError("/x/state.pt: corrupted checkpoint")}
    found = fail_fast_error_in(wrapper)
    assert type(found) is CheckpointError and str(found) == "/x/state.pt: corrupted checkpoint"
