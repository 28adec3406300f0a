"""Sweep reports from MLflow alone: table, ranking, varying params, best config, Pareto front, plots, the CLI."""

import argparse
import json

import pandas as pd
import pytest

from spklip.config import load_config
from spklip.runtime.tune import report as rep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store holding one sweep: a parent and four trials (one skipped), plus a plain run."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("abl", artifact_location=(d / "art").as_uri())
    swept = ["model.hsfe.num_subblocks", "model.hsfe.spatial_attention"]
    parent = client.create_run(exp, run_name="sweep", tags={
        rep.ROLE_TAG: "parent", rep.SWEPT_TAG: json.dumps(swept),
        rep.METRICS_TAG: json.dumps([["val/top1", "max"], ["energy_per_clip_mj", "min"]])}).info.run_id
    trials = [(5, True, 0.8, 3.0), (1, False, 0.4, 1.0), ("auto", True, 0.6, 0.5), (3, False, None, None)]
    ids = []
    for i, (k, sa, top1, energy) in enumerate(trials):
        cfg = load_config(None, {"model.hsfe.num_subblocks": k, "model.hsfe.spatial_attention": sa,
                                 "model.hsfe.step": 8 if k == "auto" else "auto"})
        tags = {rep.PARENT_TAG: parent, **({rep.SKIPPED_TAG: "does not fit"} if top1 is None else {})}
        run = client.create_run(exp, run_name=f"trial-{i}", tags=tags).info.run_id
        for key, value in cfg.to_flat_dict().items():
            client.log_param(run, key, value)
        if top1 is not None:
            client.log_metric(run, "val/top1", top1)
            client.log_metric(run, "energy_per_clip_mj", energy)
        client.set_terminated(run)
        ids.append(run)
    other = client.create_experiment("plain", artifact_location=(d / "art2").as_uri())
    for lr, top1 in [(0.1, 0.3), (0.01, 0.5)]:
        run = client.create_run(other).info.run_id
        client.log_param(run, "optim.lr", lr)
        client.log_param(run, "train.epochs", 3)
        client.log_metric(run, "val/top1", top1)
        client.log_metric(run, "train/loss", 1.0)
    return uri, parent, ids


def test_table_ranks_trials_and_shows_swept_params(store):
    uri, parent, ids = store
    table = rep.sweep_table("abl", uri=uri)
    assert table.parent_run_id == parent and table.best_run_id == ids[0]
    assert list(table.frame["val/top1"].iloc[:3]) == [0.8, 0.6, 0.4]  # best first, skipped trial last
    assert table.frame["status"].iloc[3] == "SKIPPED"
    assert list(table.frame["model.hsfe.num_subblocks"].iloc[:3]) == [5, "auto", 1]
    md = table.to_markdown()
    assert md.splitlines()[0].startswith("| trial | status | model.hsfe.num_subblocks | model.hsfe.spatial_attention")
    assert "| trial-0 | FINISHED | 5 | True | 0.8 | 3 |" in md


def test_table_of_a_plain_experiment_uses_varying_params(store):
    uri, _, _ = store
    table = rep.sweep_table("plain", uri=uri)
    assert table.params == ["optim.lr"]  # train.epochs is the same in both runs
    assert [m for m, _ in table.metrics] == ["val/top1"]  # train/* metrics are left out
    assert list(table.frame["optim.lr"]) == [0.01, 0.1]


def test_unknown_experiment_is_a_clear_error(store):
    with pytest.raises(ValueError, match="no MLflow experiment 'nope'.*abl"):
        rep.sweep_table("nope", uri=store[0])


def test_best_config_rebuilds_the_trial_config(store):
    uri, _, ids = store
    cfg = rep.best_config(uri, ids[2])
    assert cfg.model.hsfe.num_subblocks == "auto" and cfg.model.hsfe.spatial_attention is True
    assert cfg == load_config(None, {"model.hsfe.num_subblocks": "auto", "model.hsfe.step": 8})


def test_pareto_front_by_hand():
    frame = pd.DataFrame({"acc": [0.8, 0.4, 0.6, 0.5, float("nan")], "mj": [3.0, 1.0, 0.5, 0.6, 0.1]})
    front = rep.pareto_front(frame, [("acc", "max"), ("mj", "min")])
    assert sorted(front) == [0, 2]  # 1 and 3 are dominated by 2 (better and cheaper); NaN is excluded


def test_report_files_and_cli(store, tmp_path, capsys):
    from spklip.commands import sweep as cmd

    uri, _, ids = store
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["report", "--experiment", "abl", "--uri", uri, "--out", str(tmp_path)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "| trial-0 | FINISHED | 5 | True | 0.8 |" in out and ids[0] in out
    for name in ["table.csv", "table.md", "metric_vs_params.png", "curves.png", "pareto_front.png",
                 "best_config.yaml"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert pd.read_csv(tmp_path / "table.csv")["trial"].tolist()[0] == "trial-0"
    assert load_config(tmp_path / "best_config.yaml").model.hsfe.num_subblocks == 5


def test_ties_on_accuracy_are_broken_by_the_second_objective():
    frame = pd.DataFrame({"run_id": ["a", "b", "c"], "trial": ["a", "b", "c"], "status": ["FINISHED"] * 3,
                          "metrics.acc": [0.5, 0.5, 0.4], "metrics.mj": [0.9, 0.1, 0.01]})
    table = rep._assemble(frame, [], [("acc", "max"), ("mj", "min")], None)
    assert list(table.frame["trial"]) == ["b", "a", "c"] and table.best_run_id == "b"


def test_stopped_trials_are_marked_killed_and_errored_ones_stay_failed(tmp_path):
    """ASHA's stop reaches `fit` either not at all (run left RUNNING) or as an exception (fit marked it FAILED):
    both become KILLED with the stopped tag; a trial Tune reports as errored keeps FAILED."""
    from mlflow.tracking import MlflowClient

    from spklip.runtime.tune.report import STOPPED_TAG, close_stopped_children

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("abl", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="sweep", tags={rep.ROLE_TAG: "parent"}).info.run_id
    runs = {}
    for name, status in [("train-trial_id=a1", "FINISHED"), ("train-trial_id=b2", None),
                         ("train-trial_id=c3", "FAILED"), ("train-trial_id=d4", "FAILED")]:
        runs[name] = client.create_run(exp, run_name=name, tags={rep.PARENT_TAG: parent}).info.run_id
        if status:
            client.set_terminated(runs[name], status)
    assert close_stopped_children(uri, "abl", parent, errored={"train-trial_id=d4"}) == 2
    status = {name: client.get_run(rid).info.status for name, rid in runs.items()}
    assert status == {"train-trial_id=a1": "FINISHED", "train-trial_id=b2": "KILLED",
                      "train-trial_id=c3": "KILLED", "train-trial_id=d4": "FAILED"}
    assert STOPPED_TAG in client.get_run(runs["train-trial_id=c3"]).data.tags
    assert STOPPED_TAG not in client.get_run(runs["train-trial_id=d4"]).data.tags
    assert client.get_run(parent).info.status == "RUNNING"  # the parent is not a child of itself


def test_plots_leave_out_parameters_held_at_one_value(store):
    uri, parent, _ = store
    table = rep.sweep_table("abl", uri=uri, parent_run_id=parent)
    assert rep.plotted_params(table) == table.params  # K and SA both vary in this sweep
    held = rep.SweepTable(table.frame.assign(**{"model.hsfe.spatial_attention": True}), table.params, table.metrics)
    assert rep.plotted_params(held) == ["model.hsfe.num_subblocks"]


def test_ui_link_opens_the_runs_table(tmp_path):
    """MLflow 3.17 opens an experiment on its GenAI overview unless the URL asks for the model-training view."""
    from mlflow.tracking import MlflowClient

    from spklip.runtime.tune.sweep import ui_link

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = MlflowClient(tracking_uri=uri).create_experiment("ui", artifact_location=(tmp_path / "art").as_uri())
    assert ui_link(uri, "ui").endswith(f"http://127.0.0.1:5056/#/experiments/{exp}?workflowType=machine_learning")


def test_best_config_reads_none_params_back(tmp_path):
    """MLflow stores str(value): a None config field (e.g. model.fsve.surrogate_alpha) is logged as "None" and must
    rebuild as None, not fail as the string 'None'."""
    import mlflow

    from spklip.config import ExperimentConfig, load_config
    from spklip.runtime.tune.report import best_config

    cfg = load_config(None, ["model.fsve.surrogate_alpha=null"])
    assert cfg.model.fsve.surrogate_alpha is None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "art")))
    for k, v in cfg.to_flat_dict().items():
        client.log_param(run.info.run_id, k, v)
    back = best_config(uri, run.info.run_id)
    assert isinstance(back, ExperimentConfig) and back.model.fsve.surrogate_alpha is None
    assert back.to_flat_dict() == cfg.to_flat_dict()
