"""A diverged run never scores: NaN/inf scores are wrong in every ranking metric, a non-finite loss or gradient
stops the run (or skips the step), a non-finite model is never checkpointed or evaluated, and `spklip train` with
``optim.lr=1e308`` exits 2 with one line naming the step, its MLflow run FAILED (issue 28, "Results that lie")."""

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from spklip.cli import main
from spklip.config import load_config
from spklip.eval.fewshot import few_shot_eval
from spklip.eval.metrics import ranks_of_positives, retrieval_metrics, topk_accuracy
from spklip.loss import ClipLoss
from spklip.model import create_model
from spklip.train.checkpoint import TrainState, save_checkpoint
from spklip.train.loop import Loop, NonFiniteError, run_training, seed_everything
from spklip.runtime.worker import _WorkerRun, fail_fast_error_in
from spklip.runtime.tune.report import _assemble
from test_train_fixtures import write_motion_shards

SMALL = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1", "optim.warmup_steps=2",
         "optim.lr=1e-3"]
NAN, INF = float("nan"), float("inf")


# ---- ranking metrics ------------------------------------------------------------------------------------------

def test_topk_accuracy_counts_a_row_with_nan_or_inf_as_wrong_at_every_k():
    labels = torch.tensor([0, 1, 2, 0])
    assert topk_accuracy(torch.full((4, 3), NAN), labels, (1, 3, 5)) == {1: 0.0, 3: 0.0, 5: 0.0}  # was 1.0
    logits = torch.eye(3)[labels] * 5  # every clip right
    assert topk_accuracy(logits, labels, (1,)) == {1: 1.0}
    logits[1, 0] = NAN  # a NaN beside the true score
    logits[2, 2] = INF  # an infinite true score
    logits[3, 1] = -INF
    assert topk_accuracy(logits, labels, (1, 3)) == {1: 0.25, 3: 0.25}


def test_ranks_of_positives_gives_nan_positives_the_worst_rank_and_nan_candidates_no_help():
    scores = torch.full((4, 4), NAN)
    assert ranks_of_positives(scores).tolist() == [5, 5, 5, 5]  # below every candidate (NaN ranked first before)
    assert retrieval_metrics(scores, ks=(1, 4))["R4"] == 0.0
    scores = torch.eye(4) * 3  # each query's positive is the best
    scores[0, 0] = NAN  # its positive is NaN: no finite positive left
    scores[1, 3] = NAN  # a NaN negative ranks above the positive
    scores[2, 0] = INF  # so does an infinite one
    assert ranks_of_positives(scores).tolist() == [5, 2, 2, 1]
    several = torch.tensor([[NAN, 1.0, 0.5], [2.0, 1.0, NAN]])  # two positives each, one of them NaN
    pos = torch.tensor([[True, True, False], [True, False, True]])
    assert ranks_of_positives(several, pos).tolist() == [1, 1]  # the finite positive counts, the NaN one does not


def test_few_shot_scores_nan_features_as_wrong():
    labels = torch.arange(3).repeat_interleave(4)  # 3 classes x 4 clips: label 0 first, which argmax(NaN) picks
    prompts = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    features = torch.full((12, 8), NAN)
    for head in ("mix", "linear"):
        res = few_shot_eval(features, labels, prompts, ks=(1,), seeds=2, steps=2, head=head)[1]
        assert res["mean"] == 0.0 and res["zero_shot_mean"] == 0.0, (head, res)


# ---- the training loop ------------------------------------------------------------------------------------------

def _batches(n, b=3):
    gen = torch.Generator().manual_seed(0)
    return [{"spikes": (torch.rand(b, 16, 32, 32, generator=gen) < 0.2).to(torch.uint8),
             "caption": [f"a spike video of a digit {int(i)} moving" for i in torch.randint(0, 5, (b,), generator=gen)],
             "label": torch.zeros(b, dtype=torch.long)} for _ in range(n)]


class NanLossAt:
    """ClipLoss whose loss is NaN at the given (1-based) calls: a loss that diverged at chosen steps."""

    def __init__(self, cfg, calls):
        self.loss, self.calls, self.n = ClipLoss(cfg.loss), set(calls), 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        terms = self.loss(*args, **kwargs)
        if self.n in self.calls:
            terms = {k: v * NAN if k.endswith("_loss") else v for k, v in terms.items()}
        return terms


def _loop(overrides, nan_at=(), steps=5):
    cfg = load_config(overrides=SMALL + ["train.epochs=1"] + overrides)
    seed_everything(0)
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    return Loop.create(cfg, model, NanLossAt(cfg, nan_at), torch.device("cpu"), steps)


def _params(loop):
    return {k: v.detach().clone() for k, v in loop.model.named_parameters()}


def _train(loop, n=5):
    seen = {}
    run_training(loop, TrainState(), lambda e: _batches(n), lambda s, m: seen.update({s.step: (m, _params(loop))}),
                 lambda s: None)
    return seen


def test_a_nan_loss_stops_the_run_naming_the_step_before_the_weights_change():
    loop = _loop([], nan_at=[3])
    seen = {}
    with pytest.raises(NonFiniteError) as e:
        run_training(loop, TrainState(), lambda ep: _batches(5),
                     lambda s, m: seen.update({s.step: _params(loop)}), lambda s: None)
    msg = str(e.value)
    assert msg.startswith("step 3: the loss is nan") and "optim.lr=0.001" in msg and "\n" not in msg, msg
    assert set(seen) == {1, 2}
    now = _params(loop)
    assert all(torch.equal(now[k], seen[2][k]) for k in now)  # the diverged step changed nothing
    assert all(torch.isfinite(v).all() for v in now.values())


def test_an_infinite_gradient_norm_stops_the_run():
    loop = _loop([])
    p = next(q for q in loop.model.parameters() if q.requires_grad)
    p.register_hook(lambda g: g * INF)  # the loss stays finite, a gradient does not
    with pytest.raises(NonFiniteError, match=r"^step 1: the gradient norm is (inf|nan) \(loss "):
        _train(loop)


def test_lr_1e308_stops_the_run():
    loop = _loop(["optim.lr=1e308"])
    with pytest.raises(NonFiniteError, match=r"^step [0-9]+: the (loss|gradient norm) is .*optim\.lr=1e\+308"):
        _train(loop, n=6)


def test_skip_mode_skips_nan_steps_keeps_the_weights_finite_and_counts_them():
    loop = _loop(["train.nonfinite=skip"], nan_at=[2, 3])
    seen = _train(loop)
    assert sorted(seen) == [1, 2, 3, 4, 5]  # every step counted, the schedule kept in step with them
    assert [seen[s][0]["skipped_steps"] for s in range(1, 6)] == [0, 1, 2, 2, 2]
    assert all(torch.equal(seen[3][1][k], seen[1][1][k]) for k in seen[1][1])  # steps 2 and 3 left the weights
    assert not all(torch.equal(seen[4][1][k], seen[3][1][k]) for k in seen[1][1])  # step 4 trained again
    assert all(torch.isfinite(v).all() for v in _params(loop).values())
    assert loop.scheduler.last_epoch == 5 and loop.skipped_steps == 2
    states = [s["step"] for s in loop.optimizer.state.values() if "step" in s]
    assert states and all(float(s) == 3 for s in states)  # the optimiser stepped 3 times, not 5


def test_skip_mode_stops_after_too_many_skips_in_a_row():
    loop = _loop(["train.nonfinite=skip", "train.nonfinite_skips=3"], nan_at=[2, 3, 4, 5, 6])
    with pytest.raises(NonFiniteError, match=r"^step 4: the loss is nan, 3 steps in a row skipped "
                                             r"\(train\.nonfinite_skips=3\)"):
        _train(loop, n=6)


def test_nonfinite_is_checked_by_the_config():
    with pytest.raises(ValueError, match="train.nonfinite"):
        load_config(overrides=["train.nonfinite=ignore"])
    with pytest.raises(ValueError, match="train.nonfinite_skips must be >= 1"):
        load_config(overrides=["train.nonfinite_skips=0"])


def test_nonfinite_error_is_found_inside_ray_wrappers():
    wrapper = RuntimeError("WorkerGroupError: worker 0 failed")
    wrapper.worker_failures = {0: NonFiniteError("step 4: the loss is nan")}
    found = fail_fast_error_in(wrapper)
    assert type(found) is NonFiniteError and str(found) == "step 4: the loss is nan"


# ---- checkpoints and eval -------------------------------------------------------------------------------------

def _nan_model(cfg):
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(NAN)
    return model


def test_a_nonfinite_model_is_never_checkpointed():
    cfg = load_config(overrides=SMALL)
    run = SimpleNamespace(model=_nan_model(cfg), state=TrainState(step=7), cfg=cfg)
    with pytest.raises(NonFiniteError, match=r"^step 7: 1 weight tensor\(s\) hold NaN or inf .*no checkpoint saved"):
        _WorkerRun.check_finite(run)
    _WorkerRun.check_finite(SimpleNamespace(model=create_model(cfg.model, loss_cfg=cfg.loss), state=run.state,
                                            cfg=cfg))  # a finite one passes


def test_eval_refuses_a_checkpoint_with_nonfinite_weights(tmp_path, capsys):
    cfg = load_config(overrides=SMALL)
    ckpt = save_checkpoint(tmp_path / "ck", model=_nan_model(cfg), cfg=cfg, state=TrainState(step=9))
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val"]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no metrics
    lines = [line for line in out.err.splitlines() if line.startswith("spklip")]  # (a model's own progress bars)
    assert len(lines) == 1 and lines[0].startswith(f"spklip: error: {ckpt}: 1 weight tensor(s) hold NaN or inf"), lines
    assert "step 9" in lines[0] and "not evaluated" in lines[0]


# ---- the sweep report ---------------------------------------------------------------------------------------

def test_the_report_never_picks_a_failed_or_nan_trial_as_best():
    frame = pd.DataFrame({"trial": ["nan", "inf", "failed", "ok", "worse"],
                          "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED", "KILLED"],
                          "metrics.val/top1": [NAN, INF, 1.0, 0.5, 0.25], "run_id": ["a", "b", "c", "d", "e"]})
    table = _assemble(frame, [], [("val/top1", "max")], None)
    assert table.best_run_id == "d"
    assert list(table.frame["trial"])[:2] == ["ok", "worse"]  # whatever their scores, the others come last
    assert set(list(table.frame["trial"])[2:]) == {"nan", "inf", "failed"}


# ---- end to end -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_spklip_train_with_lr_1e308_exits_2_with_one_line_and_a_failed_run(ray_session, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    runs = tmp_path / "runs"
    args = ["train", "--config", "configs/tiny.yaml", "--name", "nan", "--set", f"data.path={data}",
            "--set", f"train.run_dir={runs}", "--set", "scale.num_workers=0", "--set", "train.epochs=2",
            "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
            "--set", "optim.lr=1e308", "--set", "train.log_every=1", "--set", "eval.energy=false"]
    assert main(args) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no summary: nothing was "best"
    errors = [line for line in out.err.splitlines() if line.startswith("spklip: error:")]
    assert len(errors) == 1, out.err[-3000:]
    assert errors[0].startswith("spklip: error: step ") and "optim.lr=1e+308" in errors[0], errors[0]
    assert "Traceback" not in out.err and "WorkerGroupError" not in out.err
    folder = runs / "ray" / "nan"
    assert not list(folder.glob("checkpoint_step=*"))  # no checkpoint of the diverged weights
    run_id = json.loads((folder / "spklip_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "val/top1" not in run.data.metrics and "best_checkpoint" not in run.data.tags


@pytest.mark.slow
def test_a_diverged_worker_is_not_restarted(ray_session, tmp_path, capsys):
    """With a Ray Train worker and max_failures=2, the NonFiniteError ends the run at once (no restarts: step 1 is
    logged once) and reaches the user as its own line, not Ray Train's wrapper. lr=1e30: step 1 makes the weights
    infinite (no overflow error), step 2's loss is NaN."""
    from mlflow.tracking import MlflowClient

    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    runs = tmp_path / "runs"
    args = ["train", "--config", "configs/tiny.yaml", "--name", "nanw", "--set", f"data.path={data}",
            "--set", f"train.run_dir={runs}", "--set", "scale.num_workers=1", "--set", "scale.max_failures=2",
            "--set", "train.epochs=1", "--set", "data.batch_size=4", "--set", "optim.lr=1e30",
            "--set", "train.log_every=1", "--set", "eval.energy=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spklip: error:")]
    assert len(errors) == 1 and errors[0].startswith("spklip: error: step 2: the loss is nan"), err[-3000:]
    folder = runs / "ray" / "nanw"
    run_id = json.loads((folder / "spklip_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FAILED"
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1] and math.isfinite(history[0].value)  # one attempt, not 1 + max_failures


@pytest.mark.slow
def test_a_study_with_a_diverged_trial_writes_its_report_and_exits_1(ray_session, tmp_path, capsys):
    """A study that lost trials must not look complete to a script that chains it: the report is written (the
    failure in its notes), then one line on stderr and exit 1."""
    from spklip.sweeps.hsfe_ablation import SPEC
    from spklip.runtime.tune.sweep import main as sweep_main

    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    runs = tmp_path / "runs"
    code = sweep_main(SPEC, ["--smoke-test", "--num-samples", "1", "--scheduler", "fifo", "--name", "lost",
                             "--set", f"train.run_dir={runs}", "--set", f"data.path={data}",
                             "--set", "optim.lr=1e308", "--set", "data.batch_size=4"])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "spklip: 1 trial(s) failed" in err and "exit 1" in err
    report = runs / "sweeps" / "lost" / "report" / "table.md"
    assert "1 trial(s) failed" in report.read_text()
