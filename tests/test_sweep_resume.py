"""`--resume` after the sweep's driver is killed mid-run: the sweep finishes and no finished trial runs again."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spklip.data.smoke import build_smoke_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def sweep_env(ray_tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_TMPDIR=ray_tmp,  # a private Ray temp root, so leftovers of this sweep can be found
               # save Tune's experiment state every second: a trial started after the last save is unknown to a
               # restore, which would propose a new trial instead (and leave the killed one's run behind)
               TUNE_GLOBAL_CHECKPOINT_S="1")
    return env


def trial_runs(exp: Path, status: str | None = None) -> list:
    """The sweep's MLflow child runs (optionally only those with `status`)."""
    from mlflow.tracking import MlflowClient

    from spklip.runtime.tune.sweep import SWEEP_FILE, SweepContext

    if not (exp / SWEEP_FILE).exists():
        return []
    ctx = SweepContext.load(exp)
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    parent = client.get_run(ctx.parent_run_id)
    filt = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'" + (f" and attributes.status = '{status}'"
                                                                    if status else "")
    return client.search_runs([parent.info.experiment_id], filter_string=filt)


def tune_results(exp: Path, run) -> bytes:
    """Tune's result.json of the trial behind a child run (run name ``train-trial_id=<id>``)."""
    trial_id = run.info.run_name.split("=", 1)[1]
    return next(exp.glob(f"run_trial_{trial_id}_*/result.json")).read_bytes()


def processes_under(path: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    return [p for p in ps if path in p and " Z" not in p[:12]]


def test_resume_after_killing_the_driver(tmp_path):
    data = build_smoke_data(tmp_path / "data")
    ray_tmp = tempfile.mkdtemp(prefix="spkr", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    cmd = [sys.executable, "sweeps/hsfe_ablation.py", "--smoke-test", "--num-samples", "2", "--name", "resume",
           "--max-concurrent", "1",  # one trial finished while the other trains, when the driver is killed
           "--set", f"train.run_dir={tmp_path / 'runs'}", "--set", f"data.path={data}"]
    exp = tmp_path / "runs" / "sweeps" / "resume"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=ROOT, env=sweep_env(ray_tmp), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:  # wait: one trial done, the second one training
        if trial_runs(exp, "FINISHED") and len(list((exp / "train").glob("train-trial_id=*"))) == 2:
            time.sleep(5)
            break
        time.sleep(2)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    done = trial_runs(exp, "FINISHED")
    assert len(done) == 1
    done_results = tune_results(exp, done[0])
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything in its session, as a crash would
    first.wait()
    time.sleep(5)
    for line in processes_under(ray_tmp):  # Ray's own processes die with their driver; anything else is a leak
        os.kill(int(line.split()[0]), signal.SIGKILL)
        pytest.fail(f"process left after killing the driver: {line}")

    second = subprocess.run([*cmd[:2], "--resume", "--name", "resume", *cmd[-4:]], cwd=ROOT, env=sweep_env(ray_tmp),
                            capture_output=True, text=True, timeout=500)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(list(exp.glob("run_trial_*"))) == 2  # no extra trial
    kids = trial_runs(exp)
    assert len(kids) == 2 and all(k.info.status == "FINISHED" and "val/top1" in k.data.metrics for k in kids)
    assert tune_results(exp, done[0]) == done_results  # the trial that had finished was not run again
    from mlflow.tracking import MlflowClient

    from spklip.runtime.tune.sweep import SweepContext

    ctx = SweepContext.load(exp)
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    assert len(client.get_metric_history(done[0].info.run_id, "val/top1")) == 1
    assert client.get_run(ctx.parent_run_id).info.status == "FINISHED"
    table = (exp / "report" / "table.md").read_text()
    assert sum(line.startswith("| train-trial_id=") for line in table.splitlines()) == 2
