"""spklip replaces only what it wrote: `data build --overwrite` and `eval --out` refuse other folders and files with
one line (exit 2, nothing deleted); an interrupted build leaves nothing a rerun does not clear; Ctrl-C is one line."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spklip.cli import main
from spklip.data.shards import read_metadata, write_shards
from spklip.eval.evaluate import EvalReport
from spklip.eval.report import REPORT_MARKER, write_report
from spklip.outdir import HOST, TEMP_MARKER, RefusedError, clear_stale, private_dir
from test_data_shards import INFO, make_clips

BUILD = ["data", "build", "moving-digits", "--digits", "0,1", "--motions", "left,right", "--clips-per-class", "2",
         "--unseen-classes", "1", "--planes", "8", "--height", "16", "--width", "16", "--no-progress"]


def _build(out, *extra):
    return main([*BUILD, "--out", str(out), *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spklip: error: "), err
    return err[0]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_build_refuses_a_folder_that_is_not_a_spklip_dataset(tmp_path, capsys, overwrite):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _build(out, *overwrite) == 2
    line = _one_line(capsys)
    assert str(out) in line and "not a spklip dataset" in line and "--overwrite" not in line
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and _siblings(out) == []


def test_build_refuses_foreign_manifest_extra_files_and_plain_files(tmp_path, capsys):
    web = tmp_path / "web"  # a manifest.json that is not spklip's
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "my app"}))
    assert _build(web, "--overwrite") == 2 and "not a spklip dataset" in _one_line(capsys)
    assert json.loads((web / "manifest.json").read_text()) == {"name": "my app"}

    ds = tmp_path / "ds"  # a spklip dataset someone put a file into
    assert _build(ds) == 0
    capsys.readouterr()
    (ds / "notes.txt").write_text("mine")
    (ds / "train" / "extra.parquet").write_text("mine too")
    assert _build(ds, "--overwrite") == 2
    line = _one_line(capsys)
    assert "notes.txt" in line and "train/extra.parquet" in line
    assert (ds / "notes.txt").read_text() == "mine" and read_metadata(ds)["num_clips"] == 8

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x00data")
    assert _build(plain, "--overwrite") == 2 and "is a file" in _one_line(capsys)
    assert plain.read_bytes() == b"\x00data" and _siblings(plain) == []

    link = tmp_path / "link"
    link.symlink_to(ds, target_is_directory=True)
    assert _build(link, "--overwrite") == 2 and "symbolic link" in _one_line(capsys)
    assert link.is_symlink() and (ds / "notes.txt").exists()


def test_build_replaces_its_own_dataset_and_an_empty_folder(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert _build(ds) == 0
    assert _build(ds) == 2 and "already exists; pass" in _one_line(capsys)
    assert _build(ds, "--overwrite", "--clips-per-class", "3") == 0
    assert read_metadata(ds)["num_clips"] == 12 and _siblings(ds) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _build(empty, "--overwrite") == 0 and read_metadata(empty)["num_clips"] == 8


def test_eval_out_refuses_a_folder_it_did_not_write_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    # The checkpoint does not even exist: the refusal comes first, before minutes of evaluation.
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert str(out) in line and "not a spklip eval report" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_write_report_replaces_only_an_earlier_report(tmp_path):
    out = tmp_path / "ev"
    report = EvalReport(metrics={"test/top1": 0.5}, tables={"retrieval.md": "| R@1 |\n"})
    write_report(report, out, {"checkpoint": "ck", "split": "test"})
    marker = json.loads((out / REPORT_MARKER).read_text())
    assert marker["written_by"] == "spklip eval" and marker["files"] == ["metrics.json", "retrieval.md"]
    assert marker["checkpoint"] == "ck"
    write_report(EvalReport(metrics={"test/top1": 0.75}), out)  # an earlier report: replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", REPORT_MARKER]
    assert json.loads((out / "metrics.json").read_text()) == {"test/top1": 0.75} and _siblings(out) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RefusedError, match="notes.txt"):
        write_report(report, out)
    assert (out / "notes.txt").read_text() == "mine" and _siblings(out) == []


def test_a_rerun_clears_what_dead_builds_left_and_restores_an_unfinished_swap(tmp_path):
    ds = tmp_path / "ds"
    dead = _dead_pid()
    stale = [tmp_path / f".ds.tmp-{HOST}-{dead}", tmp_path / f".ds.tmp-{dead}"]  # this form and the older one
    for d in stale:
        (d / "train").mkdir(parents=True)
        (d / "train" / "part-00000.parquet").write_bytes(b"PAR1 partial")
        (d / TEMP_MARKER).write_text(json.dumps({"written_by": "spklip", "kind": "tmp", "dest": "ds", "host": HOST,
                                                 "pid": dead}))  # what make_temp writes
    alive = tmp_path / f".ds.tmp-{HOST}-{os.getppid()}"  # a build still running: left alone
    alive.mkdir()
    other = tmp_path / f".ds.tmp-otherhost-{dead}"  # another machine's (shared disk): cannot tell, left alone
    other.mkdir()
    write_shards(make_clips(), ds, INFO)
    assert not any(d.exists() for d in stale) and alive.exists() and other.exists()

    # Killed between moving the old dataset aside and moving the new one in: the old one comes back.
    os.replace(ds, tmp_path / f".ds.old-{HOST}-{dead}")
    (tmp_path / f".ds.old-{HOST}-{dead}" / TEMP_MARKER).write_text(json.dumps(
        {"written_by": "spklip", "kind": "old", "dest": "ds", "host": HOST, "pid": dead}))  # what replace_dir writes
    assert clear_stale(ds) == [tmp_path / f".ds.old-{HOST}-{dead}"]
    assert read_metadata(ds)["num_clips"] == 12


def _spawn_build(out: Path, *extra: str) -> subprocess.Popen:
    args = [*BUILD, "--out", str(out), "--digits", "0,1,2,3,4,5,6,7,8,9", "--motions", "left,right,up,down",
            "--clips-per-class", "400", "--shard-mb", "0.001", *extra]  # minutes of work, a file every few clips
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "spklip.cli", *args], stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_shards(out: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tmp in out.parent.glob(f".{out.name}.tmp-*"):
            if any(tmp.glob("*/part-*.parquet")):
                return tmp
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the build wrote no shard in time")


def test_sigkill_leftovers_are_removed_by_the_next_build(tmp_path):
    out = tmp_path / "ds"
    proc = _spawn_build(out)
    try:
        tmp = _wait_for_shards(out, proc)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert tmp.exists() and not out.exists()  # what SIGKILL leaves: a temp folder of partial Parquet files
    assert _build(out) == 0
    assert _siblings(out) == [] and read_metadata(out)["num_clips"] == 8


def test_ctrl_c_is_one_line_exit_130_and_removes_the_temp_folder(tmp_path):
    out = tmp_path / "ds"
    proc = _spawn_build(out)
    try:
        _wait_for_shards(out, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["spklip: interrupted"], err
    assert not out.exists() and _siblings(out) == []


def test_run_folders_are_created_private_and_existing_ones_are_left_alone(tmp_path):

    old = os.umask(0o022)  # the usual umask would make new folders world-readable
    try:
        run = private_dir(tmp_path / "new" / "runs")
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        private_dir(shared)
    finally:
        os.umask(old)
    assert stat.S_IMODE(run.stat().st_mode) == 0o700 and stat.S_IMODE(run.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # spklip did not create it: not its to change
