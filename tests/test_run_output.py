"""What a run prints on the driver (spklip.runtime.logs.RunOutput) and the progress lines (spklip.train.progress), without Ray."""

import io
import json
import os
import logging
import sys
import time
import warnings

import pytest

from spklip.runtime.logs import LOG_FILE, RunOutput
from spklip.train.progress import PROGRESS_FILE, append_line, epoch_line


def test_stdout_and_library_logs_go_to_the_run_log_not_the_console(tmp_path):
    err = io.StringIO()
    real_stdout = sys.stdout
    with RunOutput(verbose=False, stream=err) as out:
        print("WARNING: 8 PYTHON worker processes have been started")  # what Ray's driver thread prints on stdout
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        out.attach(tmp_path / "run")  # what was written before the run folder was known is kept
        logging.getLogger("ray.data").warning("Execution plan of Dataset train_0")
        with warnings.catch_warnings():  # pytest's own filters would hide it
            warnings.simplefilter("always")
            warnings.warn("ExecutionOptions.exclude_resources is deprecated", DeprecationWarning)
        logging.getLogger("ray.train").error("a worker died")
    assert sys.stdout is real_stdout
    log = (tmp_path / "run" / LOG_FILE).read_text()
    for text in ("8 PYTHON worker", "Creating initial MLflow", "Execution plan", "exclude_resources", "a worker died"):
        assert text in log
    shown = err.getvalue()
    assert "a worker died" in shown  # errors still reach stderr
    assert "PYTHON worker" not in shown and "MLflow database" not in shown and "Execution plan" not in shown
    assert shown.strip().splitlines()[-1] == f"this run's log: {tmp_path / 'run' / LOG_FILE}"


def test_quieted_console_handlers_are_restored(tmp_path):
    logger = logging.getLogger("mlflow")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    propagate = logger.propagate
    try:
        with RunOutput(stream=io.StringIO()):
            logger.warning("inside")
        logger.warning("after")
        assert "inside" not in handler.stream.getvalue() and "after" in handler.stream.getvalue()
        assert handler.level == logging.NOTSET and logger.propagate == propagate
    finally:
        logger.removeHandler(handler)


def test_verbose_copies_everything_to_stderr(tmp_path):
    err = io.StringIO()
    with RunOutput(verbose=True, stream=err) as out:
        out.attach(tmp_path)
        print("a worker's stdout line")
        logging.getLogger("ray").warning("Started a local Ray instance")
    assert "a worker's stdout line" in err.getvalue() and "Started a local Ray instance" in err.getvalue()
    assert "a worker's stdout line" in (tmp_path / LOG_FILE).read_text()


def test_progress_lines_appended_by_rank_0_are_followed_on_stderr(tmp_path):
    append_line(tmp_path, "epoch 0 of an earlier attempt")  # a resumed run shows only its own lines
    err = io.StringIO()
    with RunOutput(stream=err) as out:
        out.attach(tmp_path, follow=True)
        append_line(tmp_path, "epoch 1/2  step 3/6")
        time.sleep(0.8)
        append_line(tmp_path, "epoch 2/2  step 6/6")
    lines = err.getvalue().splitlines()
    assert lines[:2] == ["epoch 1/2  step 3/6", "epoch 2/2  step 6/6"] and len(lines) == 3  # + where the logs are
    assert "epoch 2/2" in (tmp_path / LOG_FILE).read_text()
    assert (tmp_path / PROGRESS_FILE).read_text().count("\n") == 3


def test_epoch_line():
    line = epoch_line(2, 50, 24, 600, "val/top1", {"val/top1": 0.375, "zeroshot/top1": 0.5, "val/top5": 1.0},
                      2.0312, 12.34)
    assert line == "epoch 2/50  step 24/600  loss 2.031  val/top1 0.375  zeroshot/top1 0.500  (12.3 s)"
    assert epoch_line(1, 1, 3, 3, "val/loss", {}, None, 1.0) == "epoch 1/1  step 3/3  (1.0 s)"
    assert epoch_line(1, 1, 3, 3, "val/loss", {}, None, 9.0, {"step": 6.04, "data": 0.01, "eval": 2.5}) == \
        "epoch 1/1  step 3/3  (9.0 s: step 6.0, eval 2.5)"  # the phases that took time


def test_trial_line():
    from spklip.runtime.tune.sweep import trial_line

    line = trial_line(3, 8, "a1b2", "done", {"val/top1": 0.4123, "training_iteration": 4}, (("val/top1", "max"),),
                      {"optim.lr": 0.0005, "model.hsfe.num_subblocks": 3})
    assert line == "trial 3/8 a1b2 done: val/top1 0.412 after 4 epochs  model.hsfe.num_subblocks=3 optim.lr=0.0005"
    assert trial_line(1, 2, "c3", "failed", {}, (("val/top1", "max"),), {}) == "trial 1/2 c3 failed"
    unscored = {"val/top1": -sys.float_info.max, "step": 4}  # the last report was a mid-epoch checkpoint's
    assert trial_line(1, 2, "c3", "failed", unscored, (("val/top1", "max"),), {}) == \
        "trial 1/2 c3 failed: val/top1 not evaluated yet"
    seeds = {"val/top1": 0.9431, "val/top1/ci95": 0.2449, "val/top1/seeds": 2, "step": 600.0, "epoch": 50.0,
             "training_iteration": 1}  # what a trial of several seeds reports once, at its end
    assert trial_line(2, 3, "d4", "done", seeds, (("val/top1", "max"),), {"_variant": "hsfe"}) == \
        "trial 2/3 d4 done: val/top1 0.943 ± 0.245 over 2 seeds after 600 steps (50 epochs)  _variant=hsfe"


def test_job_env_leaves_out_what_a_submitted_job_sets(monkeypatch):
    from spklip.runtime.rayenv import _job_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_env({"RAY_ADDRESS": "10.0.0.5:6379"}) == {"env_vars": {"RAY_ADDRESS": "10.0.0.5:6379"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"RAY_ADDRESS": "elsewhere:1"}}}))
    assert _job_env({"RAY_ADDRESS": "10.0.0.5:6379"}) is None  # Ray would refuse to merge the same key twice


@pytest.mark.parametrize("best, expected", [("/r/checkpoint_step=0000003", {"val/top1": 0.5}),
                                            ("/r/checkpoint_step=0000006", {"val/top1": 0.25})])
def test_best_metrics_are_the_best_checkpoints(best, expected):
    from types import SimpleNamespace

    from spklip.runtime.launcher import FitResult, _best_metrics

    ranked = [(SimpleNamespace(path="/r/checkpoint_step=0000003"), {"val/top1": 0.5}),
              (SimpleNamespace(path="/r/checkpoint_step=0000006"), {"val/top1": 0.25})]
    out = FitResult(metrics={"val/top1": 0.25}, checkpoint="/r/checkpoint_step=0000006", best_checkpoint=best,
                    run_name="r", storage_path="/", mlflow_run_id=None)
    assert _best_metrics(SimpleNamespace(best_checkpoints=ranked), out) == expected
    local = SimpleNamespace(best_checkpoints=[])  # local mode ranks nothing: the last checkpoint is the best one
    out.best_checkpoint = out.checkpoint
    assert _best_metrics(local, out) == {"val/top1": 0.25}


def test_quiet_output_turns_off_the_library_progress_bars(monkeypatch):
    """Not verbose: MLflow's artifact bars (printed on stderr when the model is logged) and transformers' are off,
    unless the user set the switches; verbose leaves them alone."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    for key in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)
    RunOutput(verbose=True)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is True
    RunOutput(verbose=False)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    RunOutput(verbose=False)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is True
