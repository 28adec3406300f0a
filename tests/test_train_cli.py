"""`spklip train` / `spklip eval` from the command line: in Ray Train local mode (scale.num_workers=0), and with a
worker while another Ray instance runs on the host."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spklip.cli import main
from test_train_fixtures import write_motion_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_then_eval_a_checkpoint_from_the_cli(ray_session, tmp_path, capsys):
    data = write_motion_shards(tmp_path / "motion", per_class=10, val_per_class=2, test_per_class=2)
    args = ["train", "--config", "configs/tiny.yaml", "--name", "cli", "--set", f"data.path={data}",
            "--set", f"train.run_dir={tmp_path / 'runs'}", "--set", "scale.num_workers=0", "--set", "train.epochs=1",
            "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
            "--set", "tracking.uri=http://127.0.0.1:9"]  # nothing listens there: training must go on without it
    assert main(args) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)  # stdout holds the summary and nothing else (`spklip train ... | jq` works)
    assert "MLflow tracking at http://127.0.0.1:9 failed" in out.err and summary["mlflow_run_id"] is None
    assert summary["last_metrics"]["step"] == 6  # 4 seen classes x 6 train clips / batch 4
    ckpt = summary["best_checkpoint"]
    assert ckpt.endswith("checkpoint_step=0000006")
    assert summary["best_metrics"] == summary["last_metrics"]  # one epoch: the last checkpoint is the best one
    test = summary["test_metrics"]  # selected on val, scored on test: the chosen and the last checkpoint, labelled
    for key in ("top1", "zeroshot/top1", "v2t_class/R1", "t2v_class/mAP"):
        assert test[f"test/{key}"] == test[f"test_final/{key}"], key  # one checkpoint: the same numbers
    assert test["chance/test/top1"] == 0.25 and test["clips/test"] == 8  # 4 seen classes x 2 test clips
    assert test["chance/test/zeroshot/top1"] == 0.5 and test["clips/test/zeroshot"] == 20  # 2 unseen x 10
    assert "test split 'test': best-on-val checkpoint: test/top1" in out.err
    progress = [line for line in out.err.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 1 and progress[0].startswith("epoch 1/1  step 6/6  loss ") and "val/top1" in progress[0]
    log = Path(summary["log"])
    assert log == tmp_path / "runs" / "ray" / "cli" / "spklip.log" and f"this run's log: {log}" in out.err
    assert "epoch 1/1" in log.read_text()
    timing = summary["time"]  # rank 0's breakdown: start-up milestones in order, then the epochs' phases
    # local mode starts no Ray (no ray_init) and reads the split in this process
    assert list(timing["startup"]) == ["config", "import", "validate", "mlflow_run", "dataset",
                                       "worker_start", "model_build", "setup", "first_batch", "first_step"]
    assert sum(timing["startup"].values()) == pytest.approx(timing["startup_s"], abs=0.05)
    assert set(timing["totals"]) == {"data", "step", "eval", "bn", "checkpoint"} and timing["epochs"] == 1
    assert timing["totals"]["step"] > 0 and timing["totals"]["eval"] > 0
    # the first step and its batch are in both the start-up and the first epoch; each alone fits in the wall time
    assert timing["startup_s"] < timing["wall_s"] and sum(timing["totals"].values()) <= timing["wall_s"]
    before_fit = timing["startup"]["config"] + timing["startup"]["import"]  # fit's own clock starts after them
    assert timing["wall_s"] <= summary["seconds"] + before_fit + 0.5
    assert 0 < timing["step_fraction"] < timing["model_fraction"] <= 1

    assert main(["eval", "--checkpoint", ckpt]) == 0  # the default split is test: the run's own test numbers
    metrics = json.loads(capsys.readouterr().out)
    for key in ("test/top1", "test/zeroshot/top1", "test/t2v_class/mAP"):
        assert metrics[key] == pytest.approx(test[key], abs=1e-6), key
    assert main(["eval", "--checkpoint", ckpt, "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["val/top1"] == pytest.approx(summary["last_metrics"]["val/top1"], abs=1e-6)  # same split, same model
    written = {"metrics.json", "retrieval.md", "few_shot.md", "energy.md", "confusion_matrix.png"}
    assert {p.name for p in (tmp_path / "ev").iterdir()} == written | {"spklip_eval.json"}  # + what marks it spklip's
    marker = json.loads((tmp_path / "ev" / "spklip_eval.json").read_text())
    assert set(marker["files"]) == written and marker["checkpoint"] == ckpt and marker["split"] == "val"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def other_ray_instance():
    """A second Ray head on this host (``ray start --block`` in its own session, private temp dir), stopped by its
    process group and then by PID; never ``ray stop``."""
    tmp = tempfile.mkdtemp(prefix="spko", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port = _free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # its GCS answers
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start failed"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        for _ in range(2):  # gcs_server ignores SIGTERM; workers may have left the group: find them by the temp dir
            ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
            for line in ps.splitlines():
                if (tmp in line or f":{port}" in line) and " Z" not in line[:12]:
                    try:
                        os.kill(int(line.split()[0]), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_train_with_another_ray_on_the_host_prints_no_traceback(other_ray_instance, tmp_path):
    """Ray Train's placement-group cleaner asks the State API without an address; with two instances on the host it
    used to print a ConnectionError traceback. --verbose: the workers' output reaches stderr, so it would show."""
    data = write_motion_shards(tmp_path / "motion", per_class=10, val_per_class=2, test_per_class=2)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "spklip.cli", "train", "--verbose", "--config", "configs/tiny.yaml", "--name", "two",
           "--set", f"data.path={data}", "--set", f"train.run_dir={tmp_path / 'runs'}", "--set", "scale.num_workers=1",
           "--set", "train.epochs=1", "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]",
           "--set", "eval.few_shot_steps=5", "--set", "tracking.enabled=false"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)  # even with --verbose: Ray's messages went to stderr
    assert summary["last_metrics"]["step"] == 6
    assert "(RayTrainWorker pid=" in run.stderr  # the workers' output did reach the driver
    assert "multiple active Ray instances" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]


@pytest.mark.slow
def test_killed_driver_resumes_with_train_resume(tmp_path):
    """Kill the `spklip train` driver (SIGKILL to its whole process group, as a crash or a lost terminal would) once
    its second epoch is checkpointed: `spklip train --resume NAME` continues from that checkpoint with the run's own
    config, into the same MLflow run, and finishes it; in between, `spklip tracking sync` closed the abandoned run
    as KILLED."""
    from mlflow.tracking import MlflowClient

    data = write_motion_shards(tmp_path / "motion", per_class=10, val_per_class=2, test_per_class=2)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    spklip = [sys.executable, "-m", "spklip.cli", "train"]
    first = subprocess.Popen([*spklip, "--config", "configs/tiny.yaml", "--name", "k", "--set", f"data.path={data}",
                              "--set", f"train.run_dir={runs}", "--set", "scale.num_workers=0",
                              "--set", "train.epochs=6", "--set", "data.batch_size=4", "--set", "train.log_every=1",
                              "--set", "eval.every_epochs=1",
                              "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
                              "--set", "eval.energy=false"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    folder = runs / "ray" / "k"
    try:
        deadline = time.time() + 240
        while not (folder / "checkpoint_step=0000012" / "state.pt.sha256").exists():  # epoch 2 of 6 saved
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint after 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert main(["train", "--resume", "k", "--set", "train.epochs=9"]) == 2  # the config is the run's own
    # the killed driver left its run RUNNING: `spklip tracking sync` sees the recorded driver gone and closes it
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    run_id = json.loads((folder / "spklip_run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"
    assert main(["tracking", "sync", str(folder)]) == 0 and client.get_run(run_id).info.status == "KILLED"

    # a cluster address in the environment (as `ray job submit` sets it; nothing listens there) is not used by local
    # mode: the run says so and trains here
    resumed = subprocess.run([*spklip, "--resume", "k", "--storage", str(runs / "ray")], cwd=ROOT,
                             env={**env, "RAY_ADDRESS": "127.0.0.1:9"}, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "the Ray cluster at RAY_ADDRESS=127.0.0.1:9 is not used" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["last_metrics"]["step"] == 36 and summary["run_name"] == "k"
    assert summary["mlflow_run_id"] == run_id  # the same MLflow run goes on, RUNNING again, then FINISHED
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 37))  # nothing missing
    assert all(steps.count(s) == 1 for s in range(1, 13))  # the checkpointed epochs were not trained again
    assert client.get_run(run_id).info.status == "FINISHED"
    # neither driver started a Ray (local mode: the loop and its reader in the driver): no Ray session folder
    assert not (folder / "ray_tmp").exists() and "ray_init" not in summary["time"]["startup"]
