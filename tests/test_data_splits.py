"""Splits without leakage: group keys from clip names, whole groups per split, official split lists (UCF101 and
HMDB51 formats), the manifest's record of how the splits were made, `data inspect`'s warning on a random split of
grouped names, and the motion-video tool's object instances, each in one split. Videos are tiny real files
(4 frames of 16 x 16, ffv1 through PyAV), one encoded and copied under every clip name."""

import importlib.util
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from spklip.cli import main
from spklip.data.folders import FolderSpec, class_splits
from spklip.data.shards import read_metadata, read_shard
from spklip.data.splits import (DEFAULT_GROUP_BY, assign_group_splits, assign_splits, compile_group_by, group_key,
                                leaking_groups, read_split_lists)

UCF = {"ApplyEyeMakeup": "ApplyEyeMakeup", "Archery": "Archery", "HandstandPushups": "HandStandPushups"}  # folder:
# the name in its clips' names (UCF101 spells this one differently)
UCF_GROUPS = {1: 3, 2: 2, 3: 4, 4: 3, 5: 2, 6: 3}  # group -> clips in it (unequal, as in UCF101)
HMDB = {"brush_hair": ("April_09", "Brushing_my_hair", "Aussie_Hair", "Blonde_hair", "Curly_hair"),
        "wave": ("Hello_Waving", "Bye_Bye", "Man_waves", "Kids_wave", "Wave_hello")}  # class -> source videos
HMDB_TAGS = ("u_nm_np1_ba_goo", "f_cm_np1_fr_med", "h_nm_np2_le_bad")
SMALL = ["--planes", "4", "--height", "8", "--width", "8", "--no-progress", "--seed", "0"]


def write_video(path: Path, frames: int = 4) -> None:
    import av

    pixels = np.random.default_rng(0).integers(0, 256, (frames, 16, 16, 3), np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for f in pixels:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def ucf_name(folder: str, group: int, clip: int) -> str:
    return f"v_{UCF[folder]}_g{group:02d}_c{clip:02d}.avi"


def hmdb_name(cls: str, source: str, clip: int) -> str:
    return f"{source}_{cls}_{HMDB_TAGS[clip % len(HMDB_TAGS)]}_{clip}.avi"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path)
    return path


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory, video) -> Path:
    """ROOT/<class>/v_X_gGG_cCC.avi: 3 classes x 6 groups of 2-4 clips (51 clips)."""
    root = tmp_path_factory.mktemp("ucf") / "UCF101"
    for folder in UCF:
        (root / folder).mkdir(parents=True)
        for g, n in UCF_GROUPS.items():
            for c in range(1, n + 1):
                shutil.copyfile(video, root / folder / ucf_name(folder, g, c))
    return root


@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory, video) -> Path:
    """ROOT/<class>/<source>_<class>_<tags>_<n>.avi: 2 classes x 5 source videos of 2-3 clips."""
    root = tmp_path_factory.mktemp("hmdb") / "HMDB51"
    for cls, sources in HMDB.items():
        (root / cls).mkdir(parents=True)
        for i, source in enumerate(sources):
            for c in range(2 + i % 2):
                shutil.copyfile(video, root / cls / hmdb_name(cls, source, c))
    return root


def build(root: Path, out: Path, *extra: str) -> dict:
    assert main(["data", "build", "video-folder", "--root", str(root), "--out", str(out), *SMALL, *extra]) == 0
    return read_metadata(out)


def stored_splits(out: Path) -> dict[str, str]:
    """``{clip_id: split}`` read back from the shards."""
    meta = read_metadata(out)
    found = {}
    for files in meta["shards"].values():
        for rel in files:
            table = read_shard(out / rel, columns=["clip_id", "split"]).to_pydict()
            found.update(zip(table["clip_id"], table["split"]))
    return found


def splits_per_group(splits: dict[str, str], pattern: str = DEFAULT_GROUP_BY) -> dict[tuple[str, str], set[str]]:
    """``{(class folder, group): splits its clips are in}`` over the seen splits."""
    regex, groups = re.compile(pattern), defaultdict(set)
    for clip_id, split in splits.items():
        if split != "unseen":
            folder, name = clip_id.split("/")
            groups[folder, group_key(name, regex)].add(split)
    return groups


# ---- group keys and group assignment, on names alone -----------------------------------------------------------

def test_the_default_group_by_reads_ucf101_and_hmdb51_names():
    pattern = compile_group_by(DEFAULT_GROUP_BY)
    assert group_key("v_ApplyEyeMakeup_g08_c01.avi", pattern) == "g08"
    assert group_key("v_HandStandPushups_g25_c07.avi", pattern) == "g25"
    assert group_key("g03_c012.mp4", pattern) == "g03"  # tools/make_motion_videos.py's names
    # HMDB51: the source video, the name before its tags <body>_<camera>_<people>_<view>_<quality>_<n>
    assert group_key("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", pattern) == "April_09_brush_hair"
    assert group_key("April_09_brush_hair_f_cm_np2_fr_med_3.avi", pattern) == "April_09_brush_hair"
    assert group_key("20060723sfjffbartsinger_wave_f_cm_np1_ba_med_0.avi", pattern) == "20060723sfjffbartsinger_wave"
    for plain in ("v0.avi", "clip_0.avi", "000.mp4", "my_video_12.mp4", "big_c1.avi"):
        assert group_key(plain, pattern) is None, plain  # no group: never lumped together


def test_a_custom_group_by_takes_its_first_group_or_the_whole_match(capsys, tmp_path):
    assert group_key("actor3-take2.mp4", compile_group_by(r"actor\d+")) == "actor3"
    assert group_key("scene_7_cam2.mp4", compile_group_by(r"scene_(\d+)_")) == "7"
    assert compile_group_by("none") is None and compile_group_by("None") is None
    with pytest.raises(ValueError, match=r"--group-by '\(' is not a regular expression"):
        compile_group_by("(")
    assert main(["data", "build", "video-folder", "--root", str(tmp_path), "--out", str(tmp_path / "ds"),
                 "--group-by", "a(b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--group-by 'a(b' is not a regular expression" in err[0]


def random_class(rng: np.random.Generator) -> list[str]:
    sizes = rng.integers(1, 8, rng.integers(2, 30))
    keys = [f"g{g:02d}" for g, n in enumerate(sizes) for _ in range(n)]
    return [keys[i] for i in rng.permutation(len(keys))]


def test_group_assignment_keeps_groups_whole_and_meets_the_fractions_per_group():
    rng = np.random.default_rng(0)
    for trial in range(300):
        keys = random_class(rng)
        val, test = float(rng.choice([0.0, 0.1, 0.2, 0.3])), float(rng.choice([0.0, 0.1, 0.2, 0.3]))
        splits = assign_group_splits(keys, val, test, seed=trial)
        per_group = defaultdict(set)
        for k, s in zip(keys, splits):
            per_group[k].add(s)
        assert all(len(s) == 1 for s in per_group.values()), (keys, splits)  # no group in two splits
        assert "train" in splits
        largest = max(Counter(keys).values())
        count = Counter(splits)
        for name, frac in (("val", val), ("test", test)):  # within about half a group of the share
            assert abs(count[name] - round(len(keys) * frac)) <= largest, (name, frac, keys, splits)
        assert assign_group_splits(keys, val, test, seed=trial) == splits  # seeded, deterministic
    # Classes with the same keys and group sizes (UCF101's g01..g25, the motion tool's instances) get the same
    # assignment whatever the order of their clips, so one key is in one split across the dataset.
    keys = [f"g{g}" for g in range(5) for _ in range(4)]
    by_key = dict(zip(keys, assign_group_splits(keys, 0.2, 0.2, seed=3)))
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    assert [by_key[k] for k in shuffled] == assign_group_splits(shuffled, 0.2, 0.2, seed=3)
    assert sorted(Counter(by_key.values()).items()) == [("test", 1), ("train", 3), ("val", 1)]


def test_names_without_groups_keep_the_per_clip_split():
    spec = FolderSpec(root="unused", seed=4)
    files = [Path(f"c/v{j}.avi") for j in range(10)]
    pattern = compile_group_by(DEFAULT_GROUP_BY)
    expected = assign_splits(10, 0.2, 0.2, np.random.default_rng([4, 2, 1]))
    assert class_splits(spec, 2, "c", files, pattern, None) == expected  # the same clips as before groups
    assert class_splits(spec, 2, "c", files, None, None) == expected


def write_ucf_lists(folder: Path, test_groups: set[int], number: int = 1, missing: str | None = None,
                    unlisted: str | None = None) -> dict[str, str]:
    """UCF101 trainlistNN.txt / testlistNN.txt over the `ucf_root` tree: ``{clip_id: "train" | "test"}`` listed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(UCF, 1)))
    listed = {}
    for label, c in enumerate(UCF, 1):
        for g, n in UCF_GROUPS.items():
            for clip in range(1, n + 1):
                listed[f"{c}/{ucf_name(c, g, clip)}"] = "test" if g in test_groups else "train"
    listed.pop(unlisted, None)
    if missing:
        listed[missing] = "train"
    train = [f"{clip_id} {list(UCF).index(clip_id.split('/')[0]) + 1}\r\n"  # CRLF, as the official files have
             for clip_id, s in listed.items() if s == "train"]
    (folder / f"trainlist{number:02d}.txt").write_text("".join(train))
    (folder / f"testlist{number:02d}.txt").write_text("".join(f"{k}\n" for k, s in listed.items() if s == "test"))
    return listed


def test_split_lists_on_names_alone(tmp_path):
    write_ucf_lists(tmp_path / "ucf", {1, 2})
    lists = read_split_lists([tmp_path / "ucf"])
    assert lists.number == 1 and [Path(f).name for f in lists.files] == ["testlist01.txt", "trainlist01.txt"]
    files = [Path("x") / ucf_name("HandstandPushups", g, c) for g, n in UCF_GROUPS.items() for c in range(1, n + 1)]
    spec = FolderSpec(root="unused", val_frac=0.3, test_frac=0.0)
    splits = class_splits(spec, 0, "HandstandPushups", files, compile_group_by(DEFAULT_GROUP_BY), lists)
    for f, s in zip(files, splits):
        group = int(f.name.split("_g")[1][:2])
        assert (s == "test") == (group in (1, 2)), (f.name, s)  # the lists, exactly
    groups = defaultdict(set)
    for f, s in zip(files, splits):
        groups[group_key(f.name, compile_group_by(DEFAULT_GROUP_BY))].add(s)
    assert all(len(s) == 1 for s in groups.values()) and "val" in splits  # val carved by group from train


def test_split_list_formats_and_their_errors(tmp_path):
    write_ucf_lists(tmp_path / "ucf", {1, 2}, number=1)
    write_ucf_lists(tmp_path / "ucf", {3}, number=2)
    two = read_split_lists([tmp_path / "ucf"], number=2)
    assert two.mark("handstandpushups", ucf_name("HandstandPushups", 3, 1)) == "test"
    assert two.mark("Archery", ucf_name("Archery", 1, 1)) == "train"
    explicit = read_split_lists([tmp_path / "ucf" / "trainlist02.txt", tmp_path / "ucf" / "testlist02.txt"])
    assert explicit.marks == two.marks
    hmdb = tmp_path / "hmdb" / "brush_hair_test_split1.txt"
    hmdb.parent.mkdir()
    hmdb.write_text("a_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nb_brush_hair_f_cm_np1_fr_med_0.avi 2 \n"
                    "c_brush_hair_h_nm_np2_le_bad_1.avi 0 \n\n")
    got = read_split_lists([hmdb.parent]).marks
    assert got == {("brush_hair", "a_brush_hair_u_nm_np1_ba_goo_0.avi"): "train",
                   ("brush_hair", "b_brush_hair_f_cm_np1_fr_med_0.avi"): "test",
                   ("brush_hair", "c_brush_hair_h_nm_np2_le_bad_1.avi"): "unused"}
    (tmp_path / "notes.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    errors = {
        "unknown split file format": [tmp_path / "notes.txt"],
        "does not exist": [tmp_path / "nothing.txt"],
        "UCF101 needs both trainlist01.txt and testlist01.txt": [tmp_path / "ucf" / "trainlist01.txt"],
        "different splits": [tmp_path / "ucf" / "trainlist01.txt", tmp_path / "ucf" / "testlist02.txt"],
        "no split lists of split 3": [tmp_path / "ucf"],
    }
    for message, paths in errors.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            read_split_lists(paths, number=3 if "split 3" in message else 1)
    bad = tmp_path / "bad" / "wave_test_split1.txt"
    bad.parent.mkdir()
    bad.write_text("x_wave_u_nm_np1_ba_goo_0.avi 1\nx_wave_u_nm_np1_ba_goo_1.avi train\n")
    with pytest.raises(ValueError, match=r"wave_test_split1.txt, line 2: .* is not a '<video> <0\|1\|2>' line"):
        read_split_lists([bad])
    (tmp_path / "ucf" / "testlist01.txt").write_text(f"Archery/{ucf_name('Archery', 3, 1)}\n")  # also in train
    with pytest.raises(ValueError, match="listed as both"):
        read_split_lists([tmp_path / "ucf"])


# ---- builds from tiny real videos ------------------------------------------------------------------------------

def test_group_split_never_puts_a_group_in_two_splits(ucf_root, tmp_path, capsys):
    meta = build(ucf_root, tmp_path / "ds", "--unseen", "Archery")
    splits = stored_splits(tmp_path / "ds")
    groups = splits_per_group(splits)
    assert len(groups) == 12 and all(len(s) == 1 for s in groups.values()), groups
    assert {s for s in splits.values()} == {"train", "val", "test", "unseen"}
    record = meta["builder"]["splits"]
    assert record["method"] == "group" and record["group_by"] == DEFAULT_GROUP_BY and record["split_files"] == []
    assert record["grouped_clips"] == 34 and sum(record["groups"].values()) == 12
    assert not {"group_by", "split_files", "split_number"} & set(meta["builder"])  # recorded once, under splits
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "ds")]) == 0
    out, err = capsys.readouterr()
    assert "split method group by" in out and "warning" not in err
    # The same names with --group-by none: per clip at random; recorded, and inspect warns in one line.
    meta = build(ucf_root, tmp_path / "random", "--unseen", "Archery", "--group-by", "none")
    assert meta["builder"]["splits"]["method"] == "random" and meta["builder"]["splits"]["group_by"] is None
    assert any(len(s) > 1 for s in splits_per_group(stored_splits(tmp_path / "random")).values())  # it leaks
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "random")]) == 0
    out, err = capsys.readouterr()
    assert "split method random per clip" in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "splits were drawn per clip at random, but 34 of 34 clip names carry a group" in \
        warnings[0] and "--split-file" in warnings[0]


def test_leak_detection_counts_groups_in_two_splits():
    clips = [("A/v_A_g01_c01.avi", "train"), ("A/v_A_g01_c02.avi", "test"), ("B/v_B_g01_c01.avi", "val"),
             ("B/x.avi", "train"), ("003-00001", "train")]
    assert leaking_groups(clips) == (3, 2, 1)  # A's g01 and B's g01 are different groups


def test_ucf101_split_files_are_honoured(ucf_root, tmp_path, capsys):
    missing = "Archery/v_Archery_g07_c01.avi"
    unlisted = f"ApplyEyeMakeup/{ucf_name('ApplyEyeMakeup', 6, 1)}"
    listed = write_ucf_lists(tmp_path / "ucfTrainTestlist", {1, 2}, missing=missing, unlisted=unlisted)
    write_ucf_lists(tmp_path / "ucfTrainTestlist", {5, 6}, number=2)  # another split in the folder: not taken
    capsys.readouterr()
    meta = build(ucf_root, tmp_path / "ds", "--split-file", str(tmp_path / "ucfTrainTestlist"), "--val-frac", "0.25")
    err = capsys.readouterr().err
    splits = stored_splits(tmp_path / "ds")
    listed.pop(missing)
    assert {k for k, s in splits.items() if s == "test"} == {k for k, s in listed.items() if s == "test"}
    assert {k for k, s in splits.items() if s in ("train", "val")} == {k for k, s in listed.items() if s == "train"}
    assert unlisted not in splits
    assert all(len(s) == 1 for s in splits_per_group(splits).values())  # val never shares a group with train
    assert {s for s in splits.values()} == {"train", "val", "test"}
    record = meta["builder"]["splits"]
    assert record["method"] == "split-file" and record["split_number"] == 1
    assert [Path(f).name for f in record["split_files"]] == ["testlist01.txt", "trainlist01.txt"]
    assert (record["unlisted"], record["missing"], record["unused"]) == (1, 1, 0)
    assert "spklip: warning: --split-file: 1 clip under the root is in no list: left out" in err
    assert "spklip: warning: --split-file: 1 clip named in the lists is not under the root: left out" in err
    # The second split's lists, named one by one; inspect says how the splits were made.
    build(ucf_root, tmp_path / "two", "--split-file", str(tmp_path / "ucfTrainTestlist" / "trainlist02.txt"),
          "--split-file", str(tmp_path / "ucfTrainTestlist" / "testlist02.txt"))
    test = {k for k, s in stored_splits(tmp_path / "two").items() if s == "test"}
    assert test and all(re.search(r"_g0[56]_", k) for k in test)
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "ds")]) == 0
    out, err = capsys.readouterr()
    assert "split method split files testlist01.txt, trainlist01.txt (split 1)" in out and "warning" not in err


def test_hmdb51_split_files_are_honoured(hmdb_root, tmp_path, capsys):
    lists, marks = tmp_path / "testTrainMulti_7030_splits", {}
    lists.mkdir()
    for cls, sources in HMDB.items():
        lines = []
        for i, source in enumerate(sources):
            for c in range(2 + i % 2):
                mark = (1, 1, 2, 0, 1)[i]
                name = hmdb_name(cls, source, c)
                if (cls, i, c) != ("wave", 4, 0):  # one clip in no list
                    lines.append(f"{name} {mark} \n")
                    marks[f"{cls}/{name}"] = {0: "unused", 1: "train", 2: "test"}[mark]
        (lists / f"{cls}_test_split1.txt").write_text("".join(lines))
        (lists / f"{cls}_test_split2.txt").write_text("".join(lines[::-1]))  # another split: not taken
    capsys.readouterr()
    meta = build(hmdb_root, tmp_path / "ds", "--split-file", str(lists), "--val-frac", "0.3")
    err = capsys.readouterr().err
    splits = stored_splits(tmp_path / "ds")
    assert {k for k, s in splits.items() if s == "test"} == {k for k, m in marks.items() if m == "test"}
    assert {k for k, s in splits.items() if s in ("train", "val")} == {k for k, m in marks.items() if m == "train"}
    groups = splits_per_group(splits)
    assert len(groups) == 8 and all(len(s) == 1 for s in groups.values())  # a source video in one split
    assert "val" in splits.values()
    record = meta["builder"]["splits"]
    assert record["method"] == "split-file" and (record["unlisted"], record["unused"], record["missing"]) == (1, 6, 0)
    assert "--split-file: 6 clips are marked 0 (unused) in the HMDB51 lists: left out" in err


def test_a_split_file_of_unknown_format_is_one_line_exit_2(ucf_root, tmp_path, capsys):
    (tmp_path / "splits.csv").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi,test\n")
    capsys.readouterr()
    assert main(["data", "build", "video-folder", "--root", str(ucf_root), "--out", str(tmp_path / "ds"), *SMALL,
                 "--split-file", str(tmp_path / "splits.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spklip: error: --split-file {tmp_path / 'splits.csv'}: unknown")
    assert not (tmp_path / "ds").exists()
    other = tmp_path / "other"
    write_ucf_lists(other, set())
    (other / "trainlist01.txt").write_text("Other/v_Other_g01_c01.avi 1\n")
    (other / "testlist01.txt").write_text("Other/v_Other_g02_c01.avi\n")
    assert main(["data", "build", "video-folder", "--root", str(ucf_root), "--out", str(tmp_path / "ds"), *SMALL,
                 "--split-file", str(other)]) == 2
    assert "none of the clips the lists name is under" in capsys.readouterr().err


# ---- tools/make_motion_videos.py -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def motion_tool():
    path = Path(__file__).resolve().parents[1] / "tools" / "make_motion_videos.py"
    spec = importlib.util.spec_from_file_location("make_motion_videos", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_motion_tool_instances_share_no_pixels(motion_tool):
    for instances in (2, 5, 9):
        boxes = [(photo, box) for name, photo, *_ in motion_tool.OBJECTS
                 for box in motion_tool.instance_boxes(name, instances)]
        assert len(boxes) == len(motion_tool.OBJECTS) * instances
        for i, (pa, a) in enumerate(boxes):
            assert all(pa != pb or not motion_tool._overlap(a, b) for pb, b in boxes[i + 1:]), (instances, a)
    assert motion_tool.instance_boxes("dahlia", 1) == [(85, 165, 280)]  # --instances 1: the whole region


def test_motion_tool_puts_each_object_instance_in_one_split(motion_tool, tmp_path, capsys):
    assert motion_tool.main(["--out", str(tmp_path / "videos"), "--objects", "roof,dahlia,petals", "--motions",
                             "left,right", "--clips-per-class", "6", "--instances", "3", "--frames", "4", "--size",
                             "16", "--object-size", "6", "--speed-min", "0.5", "--speed-max", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "videos" / "roof_moves_left").iterdir())[:2] == [
        "g01_c001.mp4", "g01_c004.mp4"]
    build(tmp_path / "videos", tmp_path / "ds")
    where = defaultdict(set)  # (object, instance) -> splits, over every class of the tree
    for clip_id, split in stored_splits(tmp_path / "ds").items():
        folder, name = clip_id.split("/")
        where[folder.split("_moves_")[0], name.split("_")[0]].add(split)
    assert len(where) == 9 and all(len(s) == 1 for s in where.values()), where
    assert set().union(*where.values()) == {"train", "val", "test"}


def test_inspect_names_the_handwriting_pools_of_moving_digits(tmp_path, capsys):
    """A moving-digits build says how its splits were made (disjoint handwriting pools), not "not recorded"."""
    out_dir = tmp_path / "md"
    assert main(["data", "build", "moving-digits", "--out", str(out_dir), "--digits", "0,1", "--motions", "left,right",
                 "--clips-per-class", "3", "--planes", "8", "--height", "16", "--width", "16"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("split method"))
    assert "own 60/20/20 pool" in line and "not recorded" not in line
