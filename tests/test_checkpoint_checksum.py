"""Checkpoint checksums: every checkpoint carries ``state.pt.sha256``; a byte flipped inside ``state.pt`` is one
CheckpointError naming the file (before anything is unpickled), an intact one loads, and one written before
checksums existed (no ``state.pt.sha256``) still loads."""

import pytest
import torch

from spklip.cli import main
from spklip.config import load_config
from spklip.train.checkpoint import (CheckpointError, TrainState, checksum_path, read_checkpoint, save_checkpoint,
                                     verify_checksum)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    d = save_checkpoint(tmp_path / "ck", model=model, cfg=load_config(), state=TrainState(step=7, epoch=1),
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    return d, {k: v.clone() for k, v in model.state_dict().items()}


def _flip_inside_a_tensor(state: "Path", weights: torch.Tensor) -> None:  # noqa: F821
    """Flip one byte inside the stored bytes of `weights`: a corruption torch.load itself does not notice."""
    data = bytearray(state.read_bytes())
    raw = weights.numpy().tobytes()
    at = data.find(raw)
    assert at > 0, "the tensor's bytes are stored uncompressed in state.pt"
    data[at + len(raw) // 2] ^= 0x10
    state.write_bytes(bytes(data))


def test_every_checkpoint_has_a_checksum_and_an_intact_one_loads(checkpoint):
    d, weights = checkpoint
    assert checksum_path(d / "state.pt") == d / "state.pt.sha256"
    line = (d / "state.pt.sha256").read_text()
    assert line.endswith("  state.pt\n") and len(line.split()[0]) == 64  # sha256sum -c format
    assert verify_checksum(d / "state.pt") is True
    payload = read_checkpoint(d)
    assert payload["step"] == 7 and torch.equal(payload["model"]["weight"], weights["weight"])
    assert not list(d.glob("*.tmp"))


def test_flipped_bytes_are_one_checkpoint_error_naming_the_file(checkpoint, capsys):
    d, weights = checkpoint
    _flip_inside_a_tensor(d / "state.pt", weights["weight"])
    with pytest.raises(CheckpointError, match="corrupted checkpoint") as e:
        read_checkpoint(d)
    assert str(d / "state.pt") in str(e.value)
    with pytest.raises(CheckpointError, match="corrupted"):
        read_checkpoint(d / "state.pt")  # the file itself, not only its folder
    assert main(["eval", "--checkpoint", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{d / 'state.pt'}: corrupted checkpoint" in err[0], err


def test_a_checkpoint_without_checksum_file_still_loads(checkpoint):
    d, weights = checkpoint
    (d / "state.pt.sha256").unlink()  # as written before checksums existed
    assert verify_checksum(d / "state.pt") is False
    assert torch.equal(read_checkpoint(d)["model"]["weight"], weights["weight"])
    _flip_inside_a_tensor(d / "state.pt", weights["weight"])  # unverified: what old checkpoints risk
    assert not torch.equal(read_checkpoint(d)["model"]["weight"], weights["weight"])


def test_a_broken_checksum_file_is_named(checkpoint):
    d, _ = checkpoint
    (d / "state.pt.sha256").write_text("not a checksum\n")
    with pytest.raises(CheckpointError, match="state.pt.sha256: not a SHA-256 checksum file"):
        read_checkpoint(d)


def test_saving_again_replaces_the_checksum(checkpoint):
    d, _ = checkpoint
    before = (d / "state.pt.sha256").read_text()
    model = torch.nn.Linear(64, 32)
    save_checkpoint(d, model=model, cfg=load_config(), state=TrainState(step=8))
    assert (d / "state.pt.sha256").read_text() != before
    assert read_checkpoint(d)["step"] == 8
