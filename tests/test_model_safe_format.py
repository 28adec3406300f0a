"""Logged models without pickles (issue 10): a checkpoint's weights as safetensors + its flat config + SHA256SUMS,
logged as an MLflow logged model, registered, downloaded through ``models:/NAME@best`` and ``runs:/ID/NAME`` and
rebuilt by spklip's own loader; a tampered or pickled artifact is refused and never unpickled."""

import hashlib
import pickle
import shutil

import pytest
import torch

from spklip.config import load_config
from spklip.model import create_model
from spklip.runtime.tracking import BEST_ALIAS, MODEL_NAME, download_model, register_model, send_model_folder, start_run
from spklip.train.checkpoint import CheckpointError, TrainState, save_checkpoint
from spklip.train.export import (SUMS_FILE, WEIGHTS_FILE, export_checkpoint, load_model, load_spike_encoder,
                                 verify_export)

# a small text tower built from scratch: no pretrained MiniLM to load
FAST = ["model.text.kind=clip-text", "model.text.width=32", "model.text.layers=1", "model.text.heads=2"]


class Planted:
    """Unpickling this creates `path`: the proof that a loader unpickled something."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint folder of a freshly initialised tiny model, and the model."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.yaml", FAST)
    model = create_model(cfg.model, loss_cfg=cfg.loss).eval()
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", model=model, cfg=cfg,
                             state=TrainState(step=7, epoch=2, metrics={"val/top1": 0.5}))
    return folder, model


def _clips(model):
    cfg = model.cfg
    return (torch.rand(2, cfg.num_planes, cfg.height, cfg.width, generator=torch.Generator().manual_seed(1)) < 0.2)


def test_export_rebuilds_the_model_and_its_spike_encoder(trained, tmp_path):
    ckpt, model = trained
    folder = export_checkpoint(ckpt, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.safetensors", "config.json", "meta.json",
                                                               SUMS_FILE])
    rebuilt, cfg, meta = load_model(folder)
    assert (meta.step, meta.epoch, meta.metrics) == (7, 2, {"val/top1": 0.5}) and cfg.model == model.cfg
    clips = _clips(model).to(torch.uint8)
    with torch.no_grad():
        assert torch.allclose(rebuilt.encode_spikes(clips), model.encode_spikes(clips), atol=1e-6)
        assert torch.allclose(load_spike_encoder(folder)(clips), model.encode_spikes(clips), atol=1e-6)


def test_logged_model_loads_through_the_alias_and_the_run_uri(trained, tmp_path):
    ckpt, model = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = start_run(uri, "exp", tmp_path)
    model_uri = send_model_folder(run, export_checkpoint(ckpt, tmp_path / "m"))
    register_model(run, model_uri, "safe", metric="val/top1", mode="max", score=0.5)
    assert run.client.get_run(run.run_id).info.status == "RUNNING"  # logging a model leaves the run open
    clips = _clips(model).to(torch.uint8)
    for i, source in enumerate((f"models:/safe@{BEST_ALIAS}", f"runs:/{run.run_id}/{MODEL_NAME}", model_uri)):
        folder = download_model(source, tmp_path / f"dl{i}", uri)
        assert not list(folder.rglob("MLmodel")) and not list(folder.rglob("*.pth"))  # no flavour, no pickle
        rebuilt, _, meta = load_model(folder)
        assert meta.step == 7
        with torch.no_grad():
            assert torch.allclose(rebuilt.encode_spikes(clips), model.encode_spikes(clips), atol=1e-6)


def test_tampered_weights_are_refused_and_never_unpickled(trained, tmp_path):
    ckpt, _ = trained
    folder = export_checkpoint(ckpt, tmp_path / "m")
    planted = tmp_path / "unpickled"
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(Planted(planted)))
    with pytest.raises(CheckpointError, match="SHA-256"):  # the bytes no longer match SHA256SUMS
        load_model(folder)
    # a writer who also rewrites SHA256SUMS: the pickle is still only read as (invalid) safetensors
    sums = (folder / SUMS_FILE).read_text().splitlines()
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    (folder / SUMS_FILE).write_text("\n".join(f"{digest}  {WEIGHTS_FILE}" if line.endswith(WEIGHTS_FILE) else line
                                              for line in sums) + "\n")
    verify_export(folder)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(folder)
    assert not planted.exists()


def test_a_pickled_mlflow_model_is_never_loaded(trained, tmp_path):
    """What ``mlflow.pytorch.log_model`` leaves (MLmodel + data/model.pth, a pickle): refused, not unpickled; one
    logged by an older spklip loads from the checkpoint it carries in extra_files/ (``weights_only``)."""
    planted = tmp_path / "unpickled"
    (tmp_path / "m" / "data").mkdir(parents=True)
    (tmp_path / "m" / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    (tmp_path / "m" / "data" / "model.pth").write_bytes(pickle.dumps(Planted(planted)))
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        load_model(tmp_path / "m")
    shutil.copytree(trained[0], tmp_path / "m" / "extra_files")
    assert load_model(tmp_path / "m")[2].step == 7
    shutil.rmtree(tmp_path / "m" / "extra_files")
    (tmp_path / "m" / SUMS_FILE).write_text("")  # a folder that claims to be an export but lists nothing
    with pytest.raises(CheckpointError, match=SUMS_FILE):
        load_model(tmp_path / "m")
    assert not planted.exists()
