"""`spklip train` / `spklip eval` from the command line, in Ray Train local mode (scale.num_workers=0)."""

import json

import pytest

from spklip.cli import main
from test_train_fixtures import write_motion_shards


@pytest.mark.slow
def test_train_then_eval_a_checkpoint_from_the_cli(ray_session, tmp_path, capsys):
    data = write_motion_shards(tmp_path / "motion", per_class=8, val_per_class=2)
    args = ["train", "--config", "configs/tiny.yaml", "--name", "cli", "--set", f"data.path={data}",
            "--set", f"train.run_dir={tmp_path / 'runs'}", "--set", "scale.num_workers=0", "--set", "train.epochs=1",
            "--set", "data.batch_size=4", "--set", "eval.few_shot_ks=[1]", "--set", "eval.few_shot_steps=5",
            "--set", "tracking.uri=http://127.0.0.1:9"]  # nothing listens there: training must go on without it
    assert main(args) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert "MLflow tracking at http://127.0.0.1:9 failed" in out.err and summary["mlflow_run_id"] is None
    assert summary["metrics"]["step"] == 6  # 4 seen classes x 6 train clips / batch 4
    ckpt = summary["best_checkpoint"]
    assert ckpt.endswith("checkpoint_step=0000006")

    assert main(["eval", "--checkpoint", ckpt, "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["val/top1"] == pytest.approx(summary["metrics"]["val/top1"], abs=1e-6)  # same split, same model
    written = {"metrics.json", "retrieval.md", "few_shot.md", "energy.md", "confusion_matrix.png"}
    assert {p.name for p in (tmp_path / "ev").iterdir()} == written | {"spklip_eval.json"}  # + what marks it spklip's
    marker = json.loads((tmp_path / "ev" / "spklip_eval.json").read_text())
    assert set(marker["files"]) == written and marker["checkpoint"] == ckpt and marker["split"] == "val"
