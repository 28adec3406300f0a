"""Nothing of the user's is touched (issue 28): stale-temp cleanup removes or restores only what carries spklip's
marker; `data simulate --out` refuses an existing path without --overwrite (a folder or a link always) and writes all
or nothing; the read-only commands (`report`, `eval --model`) never create a tracking store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spklip.cli import main
from spklip.data.dat import write_dat
from spklip.outdir import HOST, TEMP_MARKER, RefusedError, atomic_file, clear_stale, make_temp


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("simulate:")]
    assert len(err) == 1 and err[0].startswith("spklip: error: "), err  # (the progress bar aside)
    return err[0]


def _marker(kind: str, dest: str, pid: int, host: str = HOST) -> str:
    return json.dumps({"written_by": "spklip", "kind": kind, "dest": dest, "host": host, "pid": pid})


def _tree(root: Path) -> dict[str, str]:
    """Every entry below `root` (links not followed) with its content or kind: what must stay the same."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        else:
            out[rel] = p.read_bytes().decode("latin-1") if p.is_file() else "dir"
    return out


# Each case: siblings of `ds` that look like spklip's leftovers of a dead process but are not spklip's (no marker,
# or a marker that does not belong to this name, PID, host or kind, or a link). All must survive clear_stale.
def _user_tmp_old_form(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{dead}").mkdir()
    (d / f".ds.tmp-{dead}" / "thesis.tex").write_text("years of work")


def _user_tmp(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{HOST}-{dead}").mkdir()
    (d / f".ds.tmp-{HOST}-{dead}" / "thesis.tex").write_text("years of work")


def _user_old(d: Path, dead: int) -> None:  # `ds` itself absent: an unmarked .old would have been renamed to ds
    (d / f".ds.old-{HOST}-{dead}").mkdir()
    (d / f".ds.old-{HOST}-{dead}" / "notes.md").write_text("mine")


def _marker_of_another_pid(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{HOST}-{dead}").mkdir()
    (d / f".ds.tmp-{HOST}-{dead}" / TEMP_MARKER).write_text(_marker("tmp", "ds", dead + 1))


def _marker_of_another_name(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{HOST}-{dead}").mkdir()
    (d / f".ds.tmp-{HOST}-{dead}" / TEMP_MARKER).write_text(_marker("tmp", "other", dead))


def _marker_of_another_kind(d: Path, dead: int) -> None:
    (d / f".ds.old-{HOST}-{dead}").mkdir()
    (d / f".ds.old-{HOST}-{dead}" / TEMP_MARKER).write_text(_marker("tmp", "ds", dead))


def _marker_malformed(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{HOST}-{dead}").mkdir()
    (d / f".ds.tmp-{HOST}-{dead}" / TEMP_MARKER).write_text("{not json")


def _marker_is_a_link(d: Path, dead: int) -> None:
    (d / "real_marker").write_text(_marker("tmp", "ds", dead))
    (d / f".ds.tmp-{HOST}-{dead}").mkdir()
    (d / f".ds.tmp-{HOST}-{dead}" / TEMP_MARKER).symlink_to(d / "real_marker")


def _a_plain_file(d: Path, dead: int) -> None:
    (d / f".ds.tmp-{HOST}-{dead}").write_text("a file of the user's")


def _a_link_to_a_user_folder(d: Path, dead: int) -> None:
    (d / "work").mkdir()
    (d / "work" / "thesis.tex").write_text("years of work")
    (d / "work" / TEMP_MARKER).write_text(_marker("tmp", "ds", dead))  # even marked: a link is never followed
    (d / f".ds.tmp-{HOST}-{dead}").symlink_to(d / "work", target_is_directory=True)


LOOKALIKES = [_user_tmp_old_form, _user_tmp, _user_old, _marker_of_another_pid, _marker_of_another_name,
              _marker_of_another_kind, _marker_malformed, _marker_is_a_link, _a_plain_file, _a_link_to_a_user_folder]


@pytest.mark.parametrize("make", LOOKALIKES, ids=[f.__name__.strip("_") for f in LOOKALIKES])
def test_cleanup_leaves_what_does_not_carry_spklips_marker(tmp_path, make):
    make(tmp_path, _dead_pid())
    before = _tree(tmp_path)
    assert clear_stale(tmp_path / "ds") == []
    tmp = make_temp(tmp_path / "ds")  # what every build / eval report / simulate does first
    assert _tree(tmp_path) == {**before, **_tree_of(tmp, tmp_path)}
    assert not (tmp_path / "ds").exists()  # an unmarked .old is not "restored" over the missing output


def _tree_of(tmp: Path, root: Path) -> dict[str, str]:
    rel = tmp.relative_to(root).as_posix()
    return {rel: "dir", f"{rel}/{TEMP_MARKER}": (tmp / TEMP_MARKER).read_text()}


def test_a_build_leaves_a_users_lookalike_folders_alone(tmp_path, capsys):
    dead = _dead_pid()
    for make in (_user_tmp_old_form, _user_tmp, _user_old):
        make(tmp_path, dead)
    before = _tree(tmp_path)
    assert main(["data", "build", "moving-digits", "--digits", "0,1", "--motions", "left,right", "--clips-per-class",
                 "2", "--unseen-classes", "1", "--planes", "8", "--height", "16", "--width", "16", "--no-progress",
                 "--out", str(tmp_path / "ds")]) == 0
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("ds")} == before
    assert (tmp_path / "ds" / "manifest.json").exists() and not (tmp_path / "ds" / TEMP_MARKER).exists()


def test_what_spklip_marked_is_still_cleared_and_restored(tmp_path):
    dead = _dead_pid()
    tmp = tmp_path / f".ds.tmp-{HOST}-{dead}"
    (tmp / "train").mkdir(parents=True)
    (tmp / TEMP_MARKER).write_text(_marker("tmp", "ds", dead))
    old = tmp_path / f".ds.old-{HOST}-{dead}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (old / TEMP_MARKER).write_text(_marker("old", "ds", dead))
    assert sorted(clear_stale(tmp_path / "ds")) == sorted([tmp, old])
    assert not tmp.exists() and (tmp_path / "ds" / "manifest.json").exists()
    assert not (tmp_path / "ds" / TEMP_MARKER).exists()  # the restored folder is as it was

    # killed between marking `ds` and moving it aside: the marker is removed from it, nothing else
    (tmp_path / "ds" / TEMP_MARKER).write_text(_marker("old", "ds", dead))
    assert clear_stale(tmp_path / "ds") == [] and sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "manifest.json"]


def test_make_temp_refuses_a_name_it_did_not_make(tmp_path):
    taken = tmp_path / f".ds.tmp-{HOST}-{os.getpid()}"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(RefusedError, match="not made by spklip"):
        make_temp(tmp_path / "ds")
    assert (taken / "mine.txt").read_text() == "keep"


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    dest = tmp_path / "x.npy"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# ----- spklip data simulate --out -----

@pytest.fixture
def frames(tmp_path) -> Path:
    path = tmp_path / "frames.npy"
    np.save(path, np.random.default_rng(0).integers(0, 255, (6, 8, 16), dtype=np.uint8))
    return path


def _simulate(frames: Path, out: Path, *extra: str) -> int:
    return main(["data", "simulate", str(frames), "--out", str(out), *extra])


def _existing_file(d: Path) -> Path:
    (d / "out.dat").write_text("my recording")
    return d / "out.dat"


def _link_to_a_file(d: Path) -> Path:
    (d / "target.dat").write_text("my recording")
    (d / "out.dat").symlink_to(d / "target.dat")
    return d / "out.dat"


def _dangling_link(d: Path) -> Path:
    (d / "out.npy").symlink_to(d / "nowhere.npy")
    return d / "out.npy"


def _a_folder(d: Path) -> Path:
    (d / "out.npy").mkdir()
    (d / "out.npy" / "keep.txt").write_text("mine")
    return d / "out.npy"


OUTS = [(_existing_file, []), (_link_to_a_file, []), (_link_to_a_file, ["--overwrite"]), (_dangling_link, []),
        (_dangling_link, ["--overwrite"]), (_a_folder, []), (_a_folder, ["--overwrite"])]


@pytest.mark.parametrize("make,extra", OUTS, ids=[f"{m.__name__.strip('_')}{'-overwrite' if e else ''}"
                                                  for m, e in OUTS])
def test_simulate_refuses_an_existing_out_and_changes_nothing(tmp_path, frames, capsys, make, extra):
    out = make(tmp_path)
    before = _tree(tmp_path)
    assert _simulate(frames, out, *extra) == 2
    line = _one_line(capsys)
    assert str(out) in line
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("suffix", [".dat", ".npy"])
def test_simulate_overwrites_a_plain_file_only_with_the_flag(tmp_path, frames, capsys, suffix):
    out = tmp_path / f"out{suffix}"
    out.write_text("old")
    assert _simulate(frames, out) == 2 and "--overwrite" in _one_line(capsys) and out.read_text() == "old"
    assert _simulate(frames, out, "--overwrite") == 0
    assert out.stat().st_size > 3 and sorted(p.name for p in tmp_path.iterdir()) == ["frames.npy", out.name]


@pytest.mark.parametrize("suffix", [".dat", ".npy"])
def test_simulate_is_all_or_nothing_and_never_touches_name_tmp(tmp_path, frames, capsys, monkeypatch, suffix):
    out = tmp_path / f"out{suffix}"
    mine = tmp_path / f"out{suffix}.tmp"  # the name the old writers used for their temporary file
    mine.write_text("a user's file")
    out.write_text("old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("spklip.data.dat.pack_planes" if suffix == ".dat" else "numpy.save", boom)
    assert _simulate(frames, out, "--overwrite") == 2 and "disk full" in _one_line(capsys)
    assert out.read_text() == "old" and mine.read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["frames.npy", out.name, mine.name])


def test_write_dat_never_touches_a_users_tmp_file(tmp_path):
    mine = tmp_path / "rec.dat.tmp"
    mine.write_text("a user's file")
    write_dat(tmp_path / "rec.dat", np.zeros((2, 8, 8), np.uint8))
    assert mine.read_text() == "a user's file" and (tmp_path / "rec.dat").stat().st_size == 16


# ----- read-only commands never create a store -----

READ_ONLY = [
    ["report", "--experiment", "x"],
    ["report", "--experiment", "x", "--uri", "sqlite:///elsewhere/m.db"],
    ["eval", "--model", "models:/m@best"],
    ["eval", "--model", "models:/m@best", "--tracking-uri", "sqlite:///other.db"],
    ["eval", "--model", "models:/m@best", "--tracking-uri", "file:///{tmp}/mlruns"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=["report", "report-uri", "eval-model", "eval-model-uri",
                                                 "eval-model-file-store"])
def test_read_only_commands_do_not_create_a_store(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    line = _one_line(capsys)
    assert "no MLflow tracking store" in line and "does not exist" in line
    assert list(tmp_path.iterdir()) == []
