"""Every error of `spklip.cli.main` is one line naming the file or the key, exit 2; --debug or SPKLIP_DEBUG=1 adds
the traceback. Cases: YAML syntax error, data.batch_size 0, corrupted checkpoints and Parquet shards, unexpected
exception types, Ctrl-C."""

import pickle

import pytest
import torch

import spklip.commands.model
from spklip.cli import main
from spklip.data.shards import write_shards
from test_data_shards import INFO, make_clips


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spklip: error: "), err
    return err[0]


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_preset: spklip-tiny\ndata:\n  batch_size: [4\ntrain:\n  epochs: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    line = _one_line(capsys)
    assert f"{bad}: YAML syntax error at line " in line, line


@pytest.mark.parametrize("setting, key", [("data.batch_size=0", "data.batch_size"),
                                          ("data.batch_size=-2", "data.batch_size")])
def test_bad_data_settings_name_the_key_before_anything_starts(capsys, setting, key):
    assert main(["train", "--config", "configs/tiny.yaml", "--set", setting, "--set", "data.path=/nonexistent"]) == 2
    assert key in _one_line(capsys)


def _checkpoint(tmp_path, content: bytes | None):
    d = tmp_path / "ck"
    d.mkdir()
    if content is None:  # a real torch file cut in half
        torch.save({"format": 1, "weights": torch.zeros(1000)}, d / "state.pt")
        content = (d / "state.pt").read_bytes()[:600]
    (d / "state.pt").write_bytes(content)
    return d


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage" * 40, pickle.dumps({"a": 1}), None],
                         ids=["empty", "random", "plain-pickle", "truncated"])
def test_a_corrupted_checkpoint_is_one_line_naming_it(tmp_path, capsys, content):
    ck = _checkpoint(tmp_path, content)
    assert main(["eval", "--checkpoint", str(ck)]) == 2
    line = _one_line(capsys)
    assert f"{ck / 'state.pt'}: not a" in line and "weights_only" not in line, line


@pytest.mark.parametrize("where", ["footer", "whole"])
def test_a_corrupted_shard_is_one_line_naming_it(tmp_path, capsys, where):
    ds = tmp_path / "ds"
    write_shards(make_clips(), ds, INFO)
    part = ds / "train" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    if where == "footer":
        data[-12:-4] = b"\xff" * 8  # footer length and metadata
    else:
        data[:] = b"not parquet at all" * 4
    part.write_bytes(bytes(data))
    assert main(["data", "inspect", str(ds)]) == 2
    assert str(part) in _one_line(capsys)


def _raiser(exc):
    def handler(args):
        raise exc
    return handler


def _patched_register(exc):
    def register(subparsers):
        subparsers.add_parser("models").set_defaults(handler=_raiser(exc))
    return register


@pytest.mark.parametrize("exc, shown", [(RuntimeError("boom\nsecond line"), "RuntimeError: boom ..."),
                                        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
                                        (EOFError(), "EOFError"), (OSError(5, "Input/output error", "x.bin"),
                                                                   "[Errno 5] Input/output error: 'x.bin'")])
def test_any_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, exc, shown):
    monkeypatch.setattr(spklip.commands.model, "register", _patched_register(exc))
    monkeypatch.delenv("SPKLIP_DEBUG", raising=False)
    assert main(["models"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"spklip: error: {shown}"), line
    assert main(["models", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("spklip: error: ")
    monkeypatch.setenv("SPKLIP_DEBUG", "1")
    assert main(["models"]) == 2 and "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(spklip.commands.model, "register", _patched_register(KeyboardInterrupt()))
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["spklip: interrupted"]
