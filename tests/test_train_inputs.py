"""Bad input fails with a clear message before Ray or any worker starts, and leaves nothing behind."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spklip.cli import main
from spklip.config import ConfigError, load_config
from spklip.data.shards import ShardError
from spklip.runtime import launcher
from spklip.runtime.plan import RunSpec
from test_train_fixtures import write_motion_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_motion_shards(tmp_path_factory.mktemp("data") / "motion", per_class=6, val_per_class=2)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was validated")
    monkeypatch.setattr(launcher, "ensure_ray", refuse)


def _cfg(data, tmp_path, *extra):
    return load_config(overrides=[f"data.path={data}", f"train.run_dir={tmp_path / 'runs'}", *extra])


def test_unknown_config_key_names_the_key(tmp_path, capsys):
    assert main(["train", "--set", "train.epoch=3", "--set", f"train.run_dir={tmp_path}"]) == 2
    assert "train.epoch" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(overrides=["optim.lrr=1"])


def test_wrong_schema_names_file_and_column(shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    part = next((bad / "train").glob("*.parquet"))
    table = pq.read_table(part)
    i = table.schema.get_field_index("label")
    pq.write_table(table.set_column(i, "label", table["label"].cast(pa.string())), part)
    with pytest.raises(ShardError, match="label"):
        launcher.fit(RunSpec(_cfg(bad, tmp_path)))
    assert not (tmp_path / "runs").exists()  # no MLflow run, no Ray folder


def test_empty_split_is_named(tmp_path):
    data = write_motion_shards(tmp_path / "noval", per_class=4, val_per_class=0)
    with pytest.raises(ShardError, match="'val'.*empty"):
        launcher.fit(RunSpec(_cfg(data, tmp_path)))
    assert not (tmp_path / "runs").exists()


def test_clip_shape_must_match_the_model(shards, tmp_path):
    with pytest.raises(ShardError, match="model.num_planes"):
        launcher.fit(RunSpec(_cfg(shards, tmp_path, "model.num_planes=16")))


def test_train_split_smaller_than_one_batch_per_worker(shards, tmp_path):
    with pytest.raises(ShardError, match="fewer than one batch"):
        launcher.fit(RunSpec(_cfg(shards, tmp_path, "data.batch_size=64", "scale.num_workers=2")))


def test_missing_data_and_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(ShardError, match="not a spike shard folder"):
        launcher.fit(RunSpec(_cfg(tmp_path / "nowhere", tmp_path)))
    assert main(["eval", "--checkpoint", str(tmp_path / "no-such-checkpoint")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_small_training_splits_are_decoded_once_large_ones_stream(shards, tmp_path):
    from spklip.runtime.reader import materialize_train

    assert materialize_train(_cfg(shards, tmp_path))  # a few hundred kB decoded: kept in the object store
    assert not materialize_train(_cfg(shards, tmp_path, "data.materialize_max_mb=0"))
    assert materialize_train(_cfg(shards, tmp_path, "data.materialize=true", "data.materialize_max_mb=0"))
    assert not materialize_train(_cfg(shards, tmp_path, "data.materialize=false"))


@pytest.mark.parametrize("setting, key", [("optim.lr=-1", "optim.lr"), ("data.batch_size=0", "data.batch_size"),
                                          ("optim.weight_decay=-1", "optim.weight_decay"),
                                          ("train.keep_checkpoints=0", "train.keep_checkpoints"),
                                          ("scale.cpus_per_worker=0", "scale.cpus_per_worker"),
                                          ("augment.hflip=2", "augment.hflip")])
def test_an_out_of_range_value_stops_train_before_ray_or_mlflow(shards, tmp_path, monkeypatch, capsys, setting, key):
    # `no_ray` refuses Ray; the MLflow run and the run folder would show on disk under `run_dir`
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: <run_dir>/mlflow.db
    run_dir = tmp_path / "runs"
    assert main(["train", "--config", "configs/tiny.yaml", "--name", "bad", "--set", f"data.path={shards}",
                 "--set", f"train.run_dir={run_dir}", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spklip: error: {key} must be "), err
    assert not (run_dir / "ray").exists() and not (run_dir / "mlflow.db").exists() and not run_dir.exists()


def test_local_mode_refuses_an_object_store_before_ray_or_mlflow(shards, tmp_path, monkeypatch, capsys):
    """configs/tiny.yaml trains in local mode, which writes its checkpoints itself to a local folder: `--storage
    s3://...` is refused in one line (it would have kept them locally under a wrong s3:// name), nothing written."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs"
    assert main(["train", "--config", "configs/tiny.yaml", "--name", "s3", "--set", f"data.path={shards}",
                 "--set", f"train.run_dir={run_dir}", "--storage", "s3://bucket/runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "local mode (scale.num_workers=0) keeps checkpoints in a local folder" in err[0], err
    assert not run_dir.exists()

