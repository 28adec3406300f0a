"""MLflow as people use it (issue 13): experiments marked as model training, the shard set as the run's input,
system metrics, the best model in the registry under an alias and ``spklip eval --model models:/NAME@best``; runs
whose driver was killed closed by ``spklip tracking sync`` (issue 10)."""

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from spklip.cli import main
from spklip.runtime.tracking import (BEST_ALIAS, DRIVER_FILE, EXPERIMENT_KIND_TAG, SCORE_TAG, SPOOL_DIR, TRAINING_KIND, Tracker,
                             claim_run, register_model, send_model_folder, shard_set_dataset, start_run)
from spklip.data.read import DatasetFacts
from spklip.runtime.tracking.driver import CLOSED_TAG
from test_train_fixtures import write_motion_shards

INFO = DatasetFacts(path="/data/motion-v2", class_names=["a", "b", "c"], seen_ids=[0, 1], unseen_ids=[2],
                    split_rows={"train": 24, "val": 8, "zero_shot": 4}, fingerprint="0123456789abcdef",
                    clip_shape=[4, 16, 16])
# a small text tower built from scratch: no pretrained MiniLM to load each time a model is rebuilt (train, logging
# the model, two evaluations); no extra training-set or BatchNorm passes
FAST = ["model.text.kind=clip-text", "model.text.width=32", "model.text.layers=1", "model.text.heads=2",
        "eval.train_clips=0", "eval.bn_recal_batches=0"]


def test_new_and_existing_experiments_are_marked_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    start_run(uri, "fresh", tmp_path)
    old_id = client.create_experiment("by-hand")  # made without spklip: no kind tag, the UI opens its GenAI page
    start_run(uri, "by-hand", tmp_path)
    for name in ("fresh", "by-hand"):
        assert client.get_experiment_by_name(name).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    assert client.get_experiment(old_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_dataset_input_carries_fingerprint_path_splits_and_classes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = start_run(uri, "exp", tmp_path)
    run.log_dataset(shard_set_dataset(INFO), context="training", tags={"spklip.train_split": "train"})
    (inp,) = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert inp.dataset.name == "motion-v2" and inp.dataset.digest == INFO.fingerprint
    assert json.loads(inp.dataset.source)["uri"] == "/data/motion-v2" and inp.dataset.source_type == "local"
    profile = json.loads(inp.dataset.profile)
    assert profile["splits"] == INFO.split_rows and profile["num_classes"] == 3 and profile["unseen_classes"] == 1
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training", "spklip.train_split": "train"}


def test_best_alias_moves_only_to_a_better_score(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions = {}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_bytes(b"w")  # the registry versions whatever files the model holds
    for score in (0.5, 0.4, 0.7):
        run = start_run(uri, "exp", tmp_path)
        model_uri = send_model_folder(run, tmp_path / "model")
        versions[score] = register_model(run, model_uri, "m", metric="val/top1", mode="max", score=score)
        if score == 0.4:
            assert str(run.client.get_model_version_by_alias("m", BEST_ALIAS).version) == versions[0.5]
        assert run.client.get_run(run.run_id).info.status == "RUNNING"  # logging a model leaves the run open
    best = run.client.get_model_version_by_alias("m", BEST_ALIAS)
    assert str(best.version) == versions[0.7] and float(best.tags[SCORE_TAG]) == 0.7


@pytest.mark.slow
def test_train_logs_input_system_metrics_registers_and_eval_loads_the_alias(ray_session, tmp_path, capsys):
    """One local-mode `spklip train` with ``tracking.register_as``; then the sweep's registration of a best run;
    eval through ``models:/NAME@best`` gives exactly the metrics eval gives through the checkpoint folder."""
    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    args = ["train", "--config", "configs/tiny.yaml", "--name", "reg", "--set", f"data.path={data}",
            "--set", f"train.run_dir={tmp_path / 'runs'}", "--set", "scale.num_workers=0", "--set", "train.epochs=1",
            "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
            "--set", f"tracking.uri={uri}", "--set", "tracking.register_as=tiny-motion",
            "--set", "tracking.system_metrics_interval_s=1", "--set", "tracking.experiment=reg"]
    args += [a for kv in FAST for a in ("--set", kv)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    client = MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    (inp,) = run.inputs.dataset_inputs
    manifest = json.loads((data / "manifest.json").read_text())
    assert inp.dataset.digest == manifest["fingerprint"] and json.loads(inp.dataset.source)["uri"] == str(data)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    version = client.get_model_version_by_alias("tiny-motion", BEST_ALIAS)
    assert version.run_id == run.info.run_id and run.data.tags["spklip.registered_as"] == f"tiny-motion/{version.version}"

    ckpt = summary["best_checkpoint"]
    assert main(["eval", "--checkpoint", ckpt, "--split", "val"]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", "models:/tiny-motion@best", "--tracking-uri", uri, "--split", "val"]) == 0
    by_alias = json.loads(capsys.readouterr().out)
    assert by_alias == by_checkpoint  # the registered model carries the checkpoint's bytes: exactly the same

    # a sweep's end: the best trial (here: that run) gets its model logged and registered under the sweep's name
    from spklip.config import load_config
    from spklip.runtime.tune.sweep import SweepContext, _register_best
    cfg = load_config("configs/tiny.yaml", [f"tracking.uri={uri}", f"data.path={data}"])
    parent = start_run(uri, "reg", tmp_path / "runs", run_name="sweep")
    ctx = SweepContext(spec="my-sweep", base=cfg, storage=str(tmp_path), parent_run_id=parent.run_id,
                       metrics=(("val/top1", "max"),), table_metrics=(("val/top1", "max"),), swept=(), num_samples=1)
    _register_best(ctx, tmp_path / "sweep", parent, run.info.run_id)
    assert client.get_model_version_by_alias("my-sweep", BEST_ALIAS).run_id == run.info.run_id
    assert client.get_run(parent.run_id).data.tags["spklip.sweep.registered_model"] == "models:/my-sweep@best"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_sync_closes_a_run_whose_driver_is_gone_and_resume_reopens_it(tmp_path, capsys):
    """A driver killed with SIGKILL leaves its run RUNNING: ``spklip tracking sync RUN_DIR`` marks it KILLED once
    the recorded driver process is gone (not while it lives, not for another host's), and the resumed driver's
    `claim_run` makes it RUNNING again."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "ray" / "r"
    run = start_run(uri, "exp", tmp_path, spool_dir=run_dir / SPOOL_DIR)
    claim_run(run, run_dir)
    status = lambda: run.client.get_run(run.run_id).info.status  # noqa: E731
    assert main(["tracking", "sync", str(run_dir)]) == 0 and status() == "RUNNING"  # this process: alive

    record = json.loads((run_dir / DRIVER_FILE).read_text())
    (run_dir / DRIVER_FILE).write_text(json.dumps({**record, "host": "elsewhere"}))
    assert main(["tracking", "sync", str(run_dir)]) == 0 and status() == "RUNNING"
    assert "not known here" in capsys.readouterr().err

    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its PID names no process (or, reused, one started later)
    (run_dir / DRIVER_FILE).write_text(json.dumps({**record, "pid": gone.pid, "started": record["started"] - 5}))
    assert main(["tracking", "sync", str(run_dir)]) == 0
    assert status() == "KILLED" and "marked KILLED" in capsys.readouterr().err
    assert run.client.get_run(run.run_id).data.tags[CLOSED_TAG].startswith("spklip tracking sync")

    resumed = Tracker(uri, run.run_id, spool_dir=run_dir / SPOOL_DIR)
    claim_run(resumed, run_dir)
    assert status() == "RUNNING" and json.loads((run_dir / DRIVER_FILE).read_text())["pid"] == os.getpid()
    resumed.terminate("FINISHED")
    assert main(["tracking", "sync", str(run_dir)]) == 0 and status() == "FINISHED"
