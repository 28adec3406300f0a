"""Inputs (issue 28): config files (alias bombs, non-UTF-8, look-alike Unicode keys, values too long to ever work),
numeric CLI flags outside the config, malformed metadata (manifest, spool, .npy, checkpoint), a closed stdout pipe and
`tracking sync` on a folder that is not a run: each one line naming the flag, key or file, exit 2 (141 for the pipe)."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spklip.cli import build_parser, main
from spklip.config import ConfigError, load_config
from test_data_shards import INFO, make_clips

ROOT = Path(__file__).resolve().parents[1]


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith(("simulate:", "counting "))]  # progress lines aside
    assert len(err) == 1 and err[0].startswith("spklip: error: "), err
    return err[0]


# ----- config files -----

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text,expected", [
    (BOMB, "YAML aliases (*a) are not allowed"),
    ("base: &b {epochs: 2}\ntrain: *b\n", "YAML aliases (*b) are not allowed"),
    ("train:\n  <<: *x\n", "YAML"),  # an undefined alias: refused before it is looked up
    (b"train:\n  epochs: 3 # caf\xe9\n", "is not UTF-8 text (byte 0xe9 at offset 24)"),
    (b"\xff\xfetrain: {}", "is not UTF-8 text (byte 0xff at offset 0)"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("train: {epochs: 2}\n# " + "x" * (1 << 20) + "\n", "bytes; a spklip config is at most"),
    ("- a list\n", "must hold a mapping at the top level"),
    ("1: one\ntrain: {}\n", "unknown config key 1"),  # a number key: named, not a TypeError
], ids=["alias-bomb", "alias", "merge-key", "latin-1", "utf-16", "deep", "huge", "list", "int-key"])
def test_a_bad_config_file_is_one_error_naming_it(tmp_path, text, expected):
    path = tmp_path / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    started = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert str(path) in str(e.value) or "unknown config key" in str(e.value)
    assert time.monotonic() - started < 5  # no expansion


@pytest.mark.parametrize("key,char,position", [
    ("tr\u0430in.epochs", "U+0430 CYRILLIC SMALL LETTER A", 3),  # Cyrillic a
    ("train.ep\u03bfchs", "U+03BF GREEK SMALL LETTER OMICRON", 3),
    ("train\u200b.epochs", "U+200B ZERO WIDTH SPACE", 6),
    ("model_pr\u0435set", "U+0435 CYRILLIC SMALL LETTER IE", 9),
    ("train.se\u00a0ed", "U+00A0 NO-BREAK SPACE", 3),
])
@pytest.mark.parametrize("where", ["file", "set"])
def test_a_look_alike_letter_in_a_key_is_named(tmp_path, key, char, position, where):
    if where == "file":
        *parents, leaf = key.split(".")
        text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: 1\n"
        (tmp_path / "exp.yaml").write_text(text, encoding="utf-8")
        args = (tmp_path / "exp.yaml", ())
    else:
        args = (None, [f"{key}=1"])
    with pytest.raises(ConfigError) as e:
        load_config(*args)
    assert "unknown config key" in str(e.value) and f"({char}) at position {position}" in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("tracking.experiment=" + "e" * 100_000, "tracking.experiment must be at most"),
    ("tracking.experiment=" + "e" * 300, "tracking.experiment must be at most 250"),
    ("tracking.run_name=" + "\u00e9" * 150, "tracking.run_name must be at most 200 bytes"),
    ("tracking.register_as=" + "r" * 251, "tracking.register_as must be at most 250"),
    ("train.metric=" + "m" * 251, "train.metric must be at most 250"),
    ("data.path=" + "p" * 100_000, "data.path must be at most 1024"),
    ("model.text.pretrained=" + "p" * 5000, "model.text.pretrained must be at most 1024"),
    ("tracking.uri=http://h/" + "u" * 2000, "tracking.uri must be at most 1024"),
    ("model.text.templates=[" + ",".join(["{}"] * 300) + "]", "model.text.templates must hold at most 256"),
    ("eval.few_shot_ks=[" + ",".join(["1"] * 1000) + "]", "eval.few_shot_ks must hold at most 256"),
], ids=["experiment-100k", "experiment-300", "run-name-bytes", "register-as", "metric", "data-path",
        "pretrained", "uri", "templates", "few-shot-ks"])
def test_a_value_too_long_to_work_is_refused_naming_the_key(tmp_path, monkeypatch, capsys, override, key):
    with pytest.raises(ConfigError, match=key) as e:
        load_config(None, [override])
    assert len(str(e.value)) < 300  # the value itself is not echoed
    monkeypatch.chdir(tmp_path)  # and `spklip train` stops there: before Ray or MLflow
    assert main(["train", "--set", override]) == 2 and key.split(" ")[0] in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ----- numeric CLI flags -----

BUILD = ["data", "build", "moving-digits", "--out", "{tmp}/ds", "--no-progress"]
SIM = ["data", "simulate", "{tmp}/frames.npy", "--out", "{tmp}/s.npy"]
FOLDER = ["data", "build", "video-folder", "--root", "{tmp}", "--out", "{tmp}/ds"]
DAT = ["data", "build", "dat-folder", "--root", "{tmp}", "--out", "{tmp}/ds", "--dat-height", "8", "--dat-width", "8"]
ENERGY = ["energy", "--model", "spklip-tiny"]
SWEEP = ["sweep", "hsfe-ablation"]
FLAGS = [
    (BUILD, "--planes", "0"), (BUILD, "--planes", "1.5"), (BUILD, "--height", "0"), (BUILD, "--width", "-1"),
    (BUILD, "--shard-mb", "nan"), (BUILD, "--shard-mb", "0"), (BUILD, "--shard-mb", "inf"),
    (BUILD, "--speed", "inf"), (BUILD, "--speed", "nan"), (BUILD, "--dark-current", "inf"),
    (BUILD, "--dark-current", "-1"), (BUILD, "--seed", "-1"), (BUILD, "--seed", str(2**32)),
    (BUILD, "--val-frac", "1.5"), (BUILD, "--test-frac", "nan"), (BUILD, "--clips-per-class", "0"),
    (BUILD, "--digits", "0,12"), (BUILD, "--digits", "0,x"), (BUILD, "--background", "2"), (BUILD, "--workers", "0"),
    (BUILD, "--threshold", "0.5"), (BUILD, "--planes-per-frame", "0"), (BUILD, "--mismatch", "nan"),
    (BUILD, "--pause", "-1"), (BUILD, "--unseen-classes", "-2"), (BUILD, "--digit-size", "-3"),
    (BUILD, "--clutter", "-1"),
    (SIM, "--max-frames", "-5"), (SIM, "--max-frames", "0"), (SIM, "--height", "0"), (SIM, "--chunk-planes", "0"),
    (SIM, "--dark-current", "inf"), (SIM, "--threshold", "inf"),
    (FOLDER, "--frame-stride", "0"), (FOLDER, "--split-number", "0"), (FOLDER, "--unseen-classes", "-1"),
    (DAT, "--plane-offset", "-1"), (DAT, "--plane-stride", "0"), (DAT, "--seed", "-1"),
    (ENERGY, "--batch", "0"), (ENERGY, "--rate", "nan"), (ENERGY, "--rate", "1.5"), (ENERGY, "--depth", "0"),
    (ENERGY, "--seed", "-1"),
    (SWEEP, "--num-samples", "0"), (SWEEP, "--seeds", "0"), (SWEEP, "--max-concurrent", "-1"),
    (["train"], "--name", "a/b"), (["train"], "--name", "x" * 300), (SWEEP, "--name", ".."),
]


@pytest.mark.parametrize("argv,flag,value", FLAGS, ids=[f"{a[1] if len(a) > 1 else a[0]}{f}={v[:12]}"
                                                        for a, f, v in FLAGS])
def test_a_bad_flag_value_is_one_line_naming_the_flag(tmp_path, capsys, argv, flag, value):
    with pytest.raises(SystemExit) as e:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv] + [flag, value])
    assert e.value.code == 2
    line = _one_line(capsys)
    assert f"argument {flag}" in line and "--help" in line
    assert not (tmp_path / "ds").exists() and not (tmp_path / "s.npy").exists()


def _actions(parser: argparse.ArgumentParser, prog: str = "spklip"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prog} {name}")
        else:
            yield prog, action


def test_every_numeric_flag_of_every_command_has_a_checked_type():
    """The class, not the examples: no flag of any command takes a bare int or float (which accept 0, -1, nan, inf
    whatever the flag means); each uses a spklip.cliargs type with its range."""
    bare = [f"{prog} {a.option_strings}" for prog, a in _actions(build_parser()) if a.type in (int, float)]
    assert bare == []
    from spklip.runtime.tune.cli import add_sweep_args  # the flags of sweep scripts (python sweeps/NAME.py ...)
    p = argparse.ArgumentParser()
    add_sweep_args(p)
    assert [a.option_strings for a in p._actions if a.type in (int, float)] == []


def test_a_dark_current_at_the_threshold_is_refused(tmp_path, capsys):
    np.save(tmp_path / "frames.npy", np.zeros((4, 8, 8), np.uint8))
    assert main(["data", "simulate", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "s.npy"),
                 "--dark-current", "2", "--threshold", "2"]) == 2
    assert "--dark-current" in _one_line(capsys) and not (tmp_path / "s.npy").exists()


# ----- malformed metadata -----

@pytest.fixture
def dataset(tmp_path) -> Path:
    from spklip.data.shards import write_shards

    write_shards(make_clips(), tmp_path / "ds", INFO)
    return tmp_path / "ds"


def _manifest_edit(edit):
    def apply(path: Path) -> None:
        meta = json.loads(path.read_text())
        path.write_text(edit(meta) if callable(edit) else edit)
    return apply


MANIFESTS = {
    "not-json": "{not json",
    "empty": "",
    "a-list": "[1, 2, 3]",
    "a-string": '"manifest"',
    "no-shards": lambda m: json.dumps({k: v for k, v in m.items() if k != "shards"}),
    "no-class-names": lambda m: json.dumps({k: v for k, v in m.items() if k != "class_names"}),
    "class-names-a-number": lambda m: json.dumps({**m, "class_names": 5}),
    "clip-shape-short": lambda m: json.dumps({**m, "clip_shape": [8, 8]}),
    "shards-outside": lambda m: json.dumps({**m, "shards": {"train": ["../../etc/passwd"]}}),
    "unseen-out-of-range": lambda m: json.dumps({**m, "unseen_labels": [99]}),
    "splits-a-list": lambda m: json.dumps({**m, "splits": []}),
}


@pytest.mark.parametrize("name", MANIFESTS)
def test_a_malformed_manifest_is_one_line_naming_it(dataset, capsys, name):
    _manifest_edit(MANIFESTS[name])(dataset / "manifest.json")
    assert main(["data", "inspect", str(dataset)]) == 2
    line = _one_line(capsys)
    assert str(dataset / "manifest.json") in line and "Error:" not in line, line


SPOOLS = {
    "not-json": b"not json\n",
    "truncated-record": b'{"uri": "sqlite:///x.db", "run_id": "r"}\n{"op": "log_metr',
    "header-a-list": b"[1, 2]\n",
    "record-a-list": b'{"uri": "sqlite:///x.db", "run_id": "r"}\n[1]\n',
    "no-header": b'{"op": "log_metrics"}\n',
    "latin-1": b'{"uri": "caf\xe9", "run_id": "r"}\n',
}


@pytest.mark.parametrize("name", SPOOLS)
def test_a_malformed_spool_file_is_one_line_naming_it(tmp_path, capsys, name):
    spool = tmp_path / "run" / "tracking_spool"
    spool.mkdir(parents=True)
    (spool / "host-1-abc.jsonl").write_bytes(SPOOLS[name])
    assert main(["tracking", "sync", str(tmp_path / "run")]) == 2
    line = _one_line(capsys)
    assert str(spool / "host-1-abc.jsonl") in line and "not a spklip tracking spool" in line, line


def test_tracking_sync_on_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["tracking", "sync", str(tmp_path / "photos")]) == 2
    assert "not a spklip run folder" in _one_line(capsys)
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]


def _save(path: Path, value) -> None:
    if isinstance(value, bytes):
        path.write_bytes(value)
    elif isinstance(value, dict):
        np.savez(path.with_suffix(""), **value)
        path.with_suffix(".npz").rename(path)
    else:
        np.save(path, value)


NPYS = {
    "empty-file": b"",
    "garbage": b"\x93NUMPY garbage",
    "one-d": np.zeros(16, np.uint8),
    "two-d": np.zeros((8, 8), np.uint8),
    "empty-array": np.zeros((0, 8, 8), np.uint8),
    "objects": np.array([{"a": 1}, None], dtype=object),
    "npz": {"a": np.zeros(3)},
}


@pytest.mark.parametrize("name", NPYS)
@pytest.mark.parametrize("command", ["simulate", "energy"])
def test_a_bad_npy_is_one_line_naming_it(tmp_path, capsys, name, command):
    path = tmp_path / "in.npy"
    _save(path, NPYS[name])
    argv = (["data", "simulate", str(path), "--out", str(tmp_path / "s.dat")] if command == "simulate" else
            ["energy", "--model", "spklip-tiny", "--spikes", str(path)])
    assert main(argv) == 2
    line = _one_line(capsys)
    assert f"{path}: " in line and "Error:" not in line, line
    assert not (tmp_path / "s.dat").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    from spklip.model import create_model
    from spklip.train.checkpoint import TrainState, read_checkpoint, save_checkpoint

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    d = save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model=model, cfg=cfg, state=TrainState(step=3, epoch=1))
    return d, read_checkpoint(d)


def _first_weight(payload: dict) -> str:
    return next(k for k, v in payload["model"].items() if v.dim() >= 2)


CHECKPOINTS = {
    "no-model": lambda p: {k: v for k, v in p.items() if k != "model"},
    "no-config": lambda p: {k: v for k, v in p.items() if k != "config"},
    "no-step": lambda p: {k: v for k, v in p.items() if k != "step"},
    "model-a-list": lambda p: {**p, "model": [1, 2]},
    "step-a-string": lambda p: {**p, "step": "three"},
    "wrong-shape": lambda p: {**p, "model": {**p["model"], _first_weight(p): torch.zeros(3, 3)}},
    "missing-weight": lambda p: {**p, "model": {k: v for k, v in p["model"].items() if k != _first_weight(p)}},
    "extra-weight": lambda p: {**p, "model": {**p["model"], "not.a.layer": torch.zeros(1)}},
    "config-unknown-key": lambda p: {**p, "config": {**p["config"], "nope.key": 1}},
}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_a_malformed_checkpoint_is_one_line_naming_it(tmp_path, capsys, tiny_checkpoint, name):
    d = tmp_path / "bad"
    d.mkdir()
    torch.save(CHECKPOINTS[name](dict(tiny_checkpoint[1])), d / "state.pt")  # no checksum file: loads unverified
    assert main(["eval", "--checkpoint", str(d)]) == 2
    line = _one_line(capsys)
    assert str(d) in line and "Error:" not in line, line


# ----- a reader that goes away -----

def _spklip(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "spklip.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


@pytest.mark.parametrize("args", [["--help"], ["data", "inspect", "{ds}"]], ids=["help", "inspect"])
def test_a_closed_stdout_pipe_exits_quietly(dataset, args):
    """`spklip data inspect DIR | head -3`: the reader is gone before spklip writes; no "Broken pipe" error, no
    traceback, exit 141 (what a shell shows for SIGPIPE) rather than 2."""
    proc = _spklip(*[a.replace("{ds}", str(dataset)) for a in args])
    proc.stdout.close()  # the only read end: every write now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == (0 if args == ["--help"] else 141), err  # argparse drops help it cannot write
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err, err
