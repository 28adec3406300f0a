"""Evaluation cadence (``eval.every_steps`` / ``eval.every_epochs``, the last step always), precise BN on or off
(``eval.bn_recal_batches``) and the torch threads each training process sets (``scale.threads_per_worker``).
Behaviour only: which steps are evaluated and checkpointed, whether BatchNorm is recalibrated, how many threads;
never how long anything takes."""

import json
import os

import mlflow
import pytest
import ray.train
import torch

from spklip.config import ScaleCfg, load_config
from spklip.runtime.epoch_eval import evaluates_after
from spklip.runtime.launcher import fit
from spklip.runtime.plan import RunSpec
from spklip.train.loop import apply_threads, available_cpus, worker_threads
from spklip.train.timing import read_timing
from test_train_fixtures import write_motion_shards

# 16 planes of 32x32; 4 seen classes x 12 training clips / batch 8 = 6 steps an epoch in one process
SMALL = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1", "data.batch_size=8",
         "train.log_every=1", "eval.energy=false", "eval.few_shot_ks=[1]", "eval.few_shot_seeds=1",
         "eval.few_shot_steps=5", "eval.train_clips=0", "tracking.log_model=false", "tracking.system_metrics=false",
         "train.keep_checkpoints=10"]
STEPS_PER_EPOCH = 6


def _evaluated(cfg, steps: int, spe: int) -> list[int]:
    """The steps `evaluates_after` evaluates in a run of `steps` steps of `spe` steps an epoch, as the worker asks."""
    out = []
    for step in range(1, steps + 1):
        ends_epoch = step % spe == 0 or step == steps
        if evaluates_after(cfg, step // spe + (step % spe > 0) if ends_epoch else None, step):
            out.append(step)
    return out


def test_the_default_cadence_is_every_100_steps_and_the_last_whatever_the_epochs():
    cfg = load_config("configs/tiny.yaml", ["train.epochs=10000", "train.max_steps=600"])
    assert (cfg.eval.every_steps, cfg.eval.every_epochs) == (100, 0)
    assert _evaluated(cfg, 600, 12) == [100, 200, 300, 400, 500, 600]  # the demo: 6, not 50
    assert _evaluated(load_config("configs/tiny.yaml"), 650, 13) == [100, 200, 300, 400, 500, 600, 650]  # 50 x 13
    assert _evaluated(load_config("configs/tiny.yaml", ["train.epochs=3"]), 18, 6) == [18]  # short: the last only


def test_every_epochs_replaces_the_step_cadence_and_zero_zero_evaluates_only_the_last():
    by_epoch = load_config("configs/tiny.yaml", ["train.epochs=5", "eval.every_epochs=2", "eval.every_steps=3"])
    assert _evaluated(by_epoch, 30, 6) == [12, 24, 30]
    last_only = load_config("configs/tiny.yaml", ["train.epochs=5", "eval.every_steps=0"])
    assert _evaluated(last_only, 30, 6) == [30]
    capped = load_config("configs/tiny.yaml", ["train.epochs=100", "eval.every_steps=4", "train.max_steps=10"])
    assert _evaluated(capped, 10, 6) == [4, 8, 10]  # mid-epoch steps too; max_steps is the last


def test_sweeps_use_the_default_cadence():
    from spklip.sweeps import baselines, fsve_sweep, hsfe_ablation

    for spec in (baselines.SPEC, hsfe_ablation.SPEC, fsve_sweep.SPEC):
        assert not any(k.startswith("eval.every_") for k in spec.base), spec.name


@pytest.mark.parametrize("scale, cpus, threads", [
    (ScaleCfg(num_workers=2, cpus_per_worker=0.5), 2, 1),  # the CPU share, at least 1 (Ray's OMP_NUM_THREADS rule)
    (ScaleCfg(num_workers=1, cpus_per_worker=2.0), 2, 2),  # one worker given the machine's 2 cores uses both
    (ScaleCfg(num_workers=1, cpus_per_worker=1.5), 8, 1),  # floor
    (ScaleCfg(num_workers=1, cpus_per_worker=16.0), 4, 4),  # never more than the cores
    (ScaleCfg(num_workers=0), 6, 6),  # local mode: the loop runs in the driver, every core
    (ScaleCfg(num_workers=2, cpus_per_worker=0.5, threads_per_worker=3), 8, 3),  # explicit
])
def test_worker_threads_are_the_cpu_share(scale, cpus, threads):
    assert worker_threads(scale, cpus) == threads


def test_a_local_mode_trial_beside_others_takes_its_cpu_share_not_every_core():
    # a sweep's trial training in its own process (local mode inside a Ray actor): two at once on 2 cores, 1 each
    assert worker_threads(ScaleCfg(num_workers=0, cpus_per_worker=0.5), 2, shared=True) == 1
    assert worker_threads(ScaleCfg(num_workers=0, cpus_per_worker=4.0), 8, shared=True) == 4
    assert worker_threads(ScaleCfg(num_workers=0, threads_per_worker=3), 8, shared=True) == 3  # explicit wins


def test_apply_threads_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert apply_threads(ScaleCfg(num_workers=1, cpus_per_worker=1.0)) == 1 and torch.get_num_threads() == 1
        n = apply_threads(ScaleCfg(num_workers=0))
        assert n == available_cpus() and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


def _cfg(data, tmp_path, *extra):
    return load_config("configs/tiny.yaml", [f"data.path={data}", f"train.run_dir={tmp_path / 'runs'}", *SMALL,
                                             *extra])


def _history(tmp_path, run_id: str, key: str) -> list[int]:
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_ray_worker_evaluates_and_checkpoints_at_the_step_cadence_without_precise_bn(ray_session, tmp_path,
                                                                                      monkeypatch):
    # one Ray Train worker, 6 steps an epoch, every 4 steps, max 10: evaluated (and checkpointed) at 4 and 8 (mid-
    # epoch) and 10 (the last); precise BN off: no recalibration at any of them; the worker runs 2 threads
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_motion_shards(tmp_path / "motion", per_class=16, shape=(16, 32, 32))
    cfg = _cfg(data, tmp_path, "scale.num_workers=1", "scale.cpus_per_worker=0.5", "scale.threads_per_worker=2",
               "train.epochs=100", "train.max_steps=10", "eval.every_steps=4", "eval.bn_recal_batches=0")
    result = fit(RunSpec(cfg, run_name="cadence"))
    assert result.metrics["step"] == 10
    assert _history(tmp_path, result.mlflow_run_id, "val/top1") == [4, 8, 10]
    assert _history(tmp_path, result.mlflow_run_id, "eval/bn_recal_seconds") == []  # never recalibrated
    run = tmp_path / "runs" / "ray" / "cadence"
    kept = sorted(p.name for p in run.glob("checkpoint_step=*"))
    assert kept == [f"checkpoint_step={s:07d}" for s in (4, 8, 10)], kept
    timing = read_timing(run)
    assert timing["evaluations"] == 3 and timing["totals"]["bn"] == 0.0
    assert timing["threads"] == min(2, available_cpus())  # scale.threads_per_worker reached the worker
    lines = (run / "progress.log").read_text().splitlines()
    assert ["val/top1" in line for line in lines] == [True, True], lines  # epoch 1 (step 4), epoch 2 (8 and 10)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    folders = {a.path for a in client.list_artifacts(result.mlflow_run_id, "eval")}
    assert folders == {f"eval/step_{s:07d}" for s in (4, 8, 10)}, folders


@pytest.mark.slow
def test_local_mode_evaluates_only_the_last_step_with_precise_bn(ray_session, tmp_path, monkeypatch):
    # local mode (the loop in the driver), eval.every_steps=0: one evaluation, at the last step, with precise BN
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_motion_shards(tmp_path / "motion", per_class=16, shape=(16, 32, 32))
    cfg = _cfg(data, tmp_path, "scale.num_workers=0", "train.epochs=2", "eval.every_steps=0",
               "eval.bn_recal_batches=2")
    before = torch.get_num_threads()
    reports = []  # Ray Train's local mode calls no callback: spklip's loop calls them (a sweep trial's Tune reports)

    class Recorder(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            reports.append((metrics[0]["step"], "val/top1" in metrics[0], checkpoint.path))

    try:
        result = fit(RunSpec(cfg, run_name="last-only", callbacks=[Recorder()]))
    finally:
        torch.set_num_threads(before)
    assert result.metrics["step"] == 2 * STEPS_PER_EPOCH
    assert reports == [(12, True, result.best_checkpoint)]
    assert _history(tmp_path, result.mlflow_run_id, "val/top1") == [12]
    assert _history(tmp_path, result.mlflow_run_id, "eval/bn_recal_seconds") == [12]  # recalibrated, once
    run = tmp_path / "runs" / "ray" / "last-only"
    assert sorted(p.name for p in run.glob("checkpoint_step=*")) == ["checkpoint_step=0000012"]
    timing = json.loads((run / "timing.json").read_text())
    assert timing["evaluations"] == 1 and timing["totals"]["bn"] > 0
    assert timing["threads"] == available_cpus()  # local mode: every core
    assert os.path.isfile(os.path.join(result.best_checkpoint, "state.pt"))


def test_local_mode_keeps_the_best_checkpoints_by_the_metric_and_the_latest(tmp_path):
    """Local mode ranks its own checkpoints as Ray Train's CheckpointConfig does for workers: the
    train.keep_checkpoints best by train.metric and the latest (resumes continue from it); the best on val is what
    the test split scores, also after a resume (the metrics live in each folder)."""
    from spklip.runtime.worker import REPORT_FILE, local_reports, prune_local

    cfg = load_config("configs/tiny.yaml", ["train.keep_checkpoints=2"])
    scores = {10: 0.5, 20: 0.9, 30: 0.7, 40: 0.2, 50: float("nan")}
    for step, top1 in scores.items():
        folder = tmp_path / f"checkpoint_step={step:07d}"
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"x")
        (folder / REPORT_FILE).write_text(json.dumps({"step": step, "val/top1": top1}))
        prune_local(str(tmp_path), cfg)
    kept = {int(c.path.rsplit("=", 1)[1]): m["val/top1"] for c, m in local_reports(str(tmp_path))}
    assert sorted(kept) == [20, 30, 50]  # the two best (0.9, 0.7) and the latest (NaN: never ranked best)
    min_cfg = load_config("configs/tiny.yaml", ["train.keep_checkpoints=1", "train.metric_mode=min"])
    prune_local(str(tmp_path), min_cfg)  # the lowest wins with mode min: 0.7 of step 30; and the latest
    assert sorted(int(c.path.rsplit("=", 1)[1]) for c, _ in local_reports(str(tmp_path))) == [30, 50]
