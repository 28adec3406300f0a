"""Seeds in sweeps: per-seed child runs aggregate to mean ± 95 % interval, and the report says what is noise."""

import json
import math

import pandas as pd
import pytest
from scipy import stats

from spklip.config import load_config
from spklip.eval.stats import difference, summarize
from spklip.runtime.tune import report as rep
from spklip.runtime.tune.report import add_gaps
from spklip.runtime.tune.sweep import seed_config


def test_summary_is_the_student_t_interval_and_one_seed_has_none():
    s = summarize([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.n == 3
    assert s.ci95 == pytest.approx(stats.t.ppf(0.975, 2) * 0.2 / math.sqrt(3))
    assert math.isnan(summarize([0.4]).ci95) and summarize([]).n == 0
    assert "±" in str(s) and "±" not in str(summarize([0.4]))


def test_difference_beyond_and_within_noise():
    far = difference([0.95, 0.93, 0.97], [0.50, 0.52, 0.48])
    assert far.beyond_noise and far.diff == pytest.approx(0.45) and far.p_value < 0.001
    near = difference([0.60, 0.80, 0.70], [0.65, 0.75, 0.62])
    assert not near.beyond_noise and "within noise" in str(near)
    assert "cannot tell" in str(difference([0.9], [0.5]))


def test_seed_config_moves_both_seeds():
    cfg = load_config(None, {"train.seed": 3, "data.seed": 10})
    assert seed_config(cfg, 0) is cfg
    moved = seed_config(cfg, 2)
    assert (moved.train.seed, moved.data.seed) == (5, 12)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep of three configurations ('variant' labels), three seeds each, as the trial driver logs them."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("study", artifact_location=(d / "art").as_uri())
    parent = client.create_run(exp, run_name="sweep", tags={
        rep.ROLE_TAG: "parent", rep.SWEPT_TAG: json.dumps(["model.arch"]),
        rep.METRICS_TAG: json.dumps([["val/top1", "max"], ["energy/energy_per_clip_mj", "min"]])}).info.run_id
    values = {"hsfe": ("spklip", [0.95, 0.93, 0.97], 2.0), "average": ("tfp-resnet", [0.50, 0.52, 0.48], 1.0),
              "hsfe-k1": ("spklip", [0.60, 0.45, 0.57], 1.5)}
    for t, (variant, (arch, top1s, energy)) in enumerate(values.items()):
        for seed, top1 in enumerate(top1s):
            run = client.create_run(exp, run_name=f"train-trial_id=t{t}-seed={seed}", tags={
                rep.PARENT_TAG: parent, rep.TRIAL_TAG: f"t{t}", rep.SEED_TAG: str(seed),
                rep.LABEL_PREFIX + "variant": variant}).info.run_id
            client.log_param(run, "model.arch", arch)
            client.log_metric(run, "val/top1", top1)
            client.log_metric(run, "energy/energy_per_clip_mj", energy + 0.01 * seed)
            client.set_terminated(run)
    return uri


def test_table_has_one_row_per_configuration_with_intervals(store):
    table = rep.sweep_table("study", uri=store)
    frame = table.frame
    assert list(frame["variant"]) == ["hsfe", "hsfe-k1", "average"]  # labels shown, best first by the mean
    assert list(frame["seeds"]) == [3, 3, 3]
    assert frame["val/top1"].iloc[0] == pytest.approx(0.95)
    assert frame["val/top1 ±95%"].iloc[0] == pytest.approx(summarize([0.95, 0.93, 0.97]).ci95)
    assert sorted(table.seeds["t0"]["val/top1"]) == [0.93, 0.95, 0.97]
    assert len(table.seed_runs["t0"]) == 3
    md = table.to_markdown()
    assert "Best configuration by val/top1 (max): hsfe." in md
    assert "Best vs runner-up (hsfe-k1) on val/top1" in md and "beyond noise" in md


def test_gaps_state_the_difference_with_its_interval(store):
    table = rep.sweep_table("study", uri=store)
    metrics = add_gaps(table, [("variant", "hsfe", "average"), ("variant", "hsfe-k1", "average"),
                               ("variant", "hsfe", "missing")])
    assert metrics["gap/hsfe-average/val/top1"] == pytest.approx(0.45)
    assert metrics["gap/hsfe-average/val/top1/ci95"] > 0
    notes = "\n".join(table.notes)
    assert "Gap hsfe - average on val/top1: +0.450" in notes and "beyond noise" in notes
    assert "Gap hsfe-k1 - average on val/top1" in notes
    assert "missing" not in notes


def test_report_plots_draw_every_seed(store, tmp_path):
    table = rep.sweep_table("study", uri=store)
    assert rep.plot_metric_vs_params(table, tmp_path / "m.png").stat().st_size > 0


def test_configurations_are_named_by_what_tells_them_apart():
    out = pd.DataFrame({"trial": ["a", "b", "c"], "step_mode": ["", "auto", "auto"],
                        "model.hsfe.num_subblocks": [1, 3, 5], "seed_base": [0, 0, 0]})
    params = ["step_mode", "model.hsfe.num_subblocks", "seed_base"]
    # a label that two configurations share (K = 3 and 5 both 'auto') names neither: the swept value does
    assert rep.configuration_names(out, params, ["step_mode"]) == {
        "a": "model.hsfe.num_subblocks=1", "b": "auto model.hsfe.num_subblocks=3",
        "c": "auto model.hsfe.num_subblocks=5"}
    variants = out.assign(variant=["hsfe", "hsfe-k1", "average"])
    assert rep.configuration_names(variants, ["variant", *params], ["variant", "step_mode"]) == {
        "a": "hsfe", "b": "hsfe-k1", "c": "average"}
    same = out.assign(**{"model.hsfe.num_subblocks": [5, 5, 5], "step_mode": ["x", "x", "x"]})
    assert rep.configuration_names(same, params, ["step_mode"]) == {"a": "a", "b": "b", "c": "c"}
