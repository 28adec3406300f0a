"""Dataset builders: moving-digits (deterministic, held-out pairs, real motion), video-folder from real PyAV videos,
dat-folder from recordings, all through the `spklip data` CLI; the smoke-test dataset through the same builder."""

import numpy as np
import pytest
from PIL import Image

import spklip.data.smoke as smoke
from spklip.cli import main
from spklip.data import folders
from spklip.data.dat import read_dat, write_dat
from spklip.data.folders import read_video, read_video_window
from spklip.data.loader import SpikeShardDataset
from spklip.data.moving_digits import DigitsSpec, digit_clips
from spklip.data.reconstruct import tfp
from spklip.data.shards import read_metadata
from spklip.data.simulate import SimParams, simulate_spikes
from spklip.data.smoke import build_smoke_data, ensure_smoke_data, smoke_spec
from spklip.data.splits import clip_seed

SMALL = ["--digits", "0,1,2", "--motions", "left,right,still", "--clips-per-class", "5", "--unseen-classes", "2",
         "--planes", "12", "--height", "24", "--width", "24", "--no-progress"]


def build(tmp_path, name, *extra):
    assert main(["data", "build", "moving-digits", "--out", str(tmp_path / name), *SMALL, *extra]) == 0
    return read_metadata(tmp_path / name)


def test_moving_digits_is_deterministic_with_held_out_pairs(tmp_path):
    a, b, c = build(tmp_path, "a"), build(tmp_path, "b"), build(tmp_path, "c", "--seed", "1")
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["clip_shape"] == [12, 24, 24] and len(a["class_names"]) == 9
    assert a["splits"] == {"train": 21, "val": 7, "test": 7, "unseen": 10}
    # Every held-out pair's digit and motion are still seen in other classes (compositional zero-shot).
    for name in a["unseen_classes"]:
        digit, motion = name.split()[2], " ".join(name.split()[3:])
        assert any(digit in s for s in a["seen_classes"]) and any(s.endswith(motion) for s in a["seen_classes"])
    ids = {s: {item["clip_id"] for item in SpikeShardDataset(tmp_path / "a", s)} for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    unseen = SpikeShardDataset(tmp_path / "a", "unseen")
    assert {item["class_name"] for item in unseen} == set(a["unseen_classes"])
    item = unseen[0]
    assert item["caption"].startswith("the digit ") and item["spikes"].shape == (12, 24, 24)


def test_moving_digits_really_move():
    spec = DigitsSpec(num_planes=40, height=32, width=48, digits=(3,), motions=("left", "right", "still"),
                      clips_per_class=3, unseen_classes=0, background=0.0, speed=1.0, val_frac=0, test_frac=0)
    info, clips, total = digit_clips(spec, SimParams(threshold=1.5))
    clips = list(clips)
    assert total == len(clips) == 9
    cols = np.arange(48)
    for clip in clips:
        early, late = tfp(clip.spikes[:16], 16)[0], tfp(clip.spikes[-16:], 16)[0]
        shift = (late.sum(0) @ cols) / late.sum() - (early.sum(0) @ cols) / early.sum()  # centre of mass, px
        motion = info.class_names[clip.label].split()[-1]
        expected = {"left": -24, "right": 24, "still": 0}[motion]  # 24 frames between window centres
        assert abs(shift - expected) < 6, (motion, shift)


def write_video(path, frames, fps=10):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)  # lossless, so decoded frames are the written ones
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def write_coded_video(path, frames, codec, gop, b_frames, fps=25):
    """A lossy video with inter frames: keyframes every `gop` frames, `b_frames` reordered B-frames."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = b_frames
        if codec == "libx264":
            stream.codec_context.options = {"keyint": str(gop), "min-keyint": "1", "scenecut": "0",
                                            "bframes": str(b_frames)}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize("name, codec, gop, b_frames", [
    ("v.avi", "mpeg4", 7, 2), ("v.mp4", "mpeg4", 5, 0), ("v.mp4", "libx264", 6, 3), ("v.mkv", "mpeg2video", 9, 2),
    ("v.avi", "ffv1", 1, 0),
])
def test_video_window_seeks_and_gives_the_full_decode_frames(tmp_path, monkeypatch, name, codec, gop, b_frames):
    t = np.arange(40)[:, None, None, None]
    y, x = np.mgrid[0:48, 0:64][:, None, :, :, None]
    frames = ((128 + 100 * np.sin((x + 5 * t) / 7.0) * np.cos((y - 3 * t) / 9.0)) * [1, 0.8, 0.6]).astype(np.uint8)
    path = tmp_path / name
    write_coded_video(path, frames, codec, gop, b_frames)
    full = read_video(path, 16, 20)  # [40, 16, 20]
    calls = []
    gray = folders._gray
    monkeypatch.setattr(folders, "_gray", lambda *a, **k: calls.append(1) or gray(*a, **k))
    for needed, stride, pad in [(6, 1, False), (5, 3, False), (1, 1, False), (13, 3, False), (40, 1, False),
                                (30, 2, True)]:
        calls.clear()
        expected = folders._frame_window(full, needed, stride, pad, path)
        got = read_video_window(path, 16, 20, needed, stride, pad)
        assert got.shape == (needed, 16, 20) and np.array_equal(got, expected), (needed, stride)
        if (needed - 1) * stride + 1 <= 40:
            assert len(calls) == needed  # only the window's frames were converted (the seek found them)
    with pytest.raises(ValueError, match="--pad-short"):
        read_video_window(path, 16, 20, 30, 2)


def test_video_folder_from_real_videos(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("ApplyEyeMakeup", "brush_hair"):
        (tmp_path / "videos" / cls).mkdir(parents=True)
        for j in range(3):
            write_video(tmp_path / "videos" / cls / f"v{j}.avi", rng.integers(0, 256, (14, 24, 32, 3), np.uint8))
    out = tmp_path / "ds"
    args = ["data", "build", "video-folder", "--root", str(tmp_path / "videos"), "--out", str(out), "--planes", "12",
            "--height", "16", "--width", "16", "--planes-per-frame", "2", "--unseen", "brush_hair",
            "--val-frac", "0", "--test-frac", "0.34", "--seed", "3", "--no-progress", "--chunk-planes", "5"]
    assert main(args) == 0
    meta = read_metadata(out)
    assert meta["class_names"] == ["apply eye makeup", "brush hair"] and meta["unseen_classes"] == ["brush hair"]
    assert meta["splits"] == {"train": 2, "val": 0, "test": 1, "unseen": 3}
    item = next(i for i in SpikeShardDataset(out, "unseen") if i["clip_id"] == "brush_hair/v1.avi")
    frames = read_video(tmp_path / "videos" / "brush_hair" / "v1.avi", 16, 16)  # [14, 16, 16], centre window 6
    expected = simulate_spikes(frames[4:10], planes_per_frame=2, seed=clip_seed(3, 1, 1))
    assert item["caption"] == "brush hair" and np.array_equal(item["spikes"].numpy(), expected)
    # A too-short video is a clear error and leaves nothing behind.
    assert main([*args[:6], str(tmp_path / "short"), *args[7:], "--planes", "40"]) == 2
    assert not (tmp_path / "short").exists()


def test_dat_folder_crops_and_subsamples_recordings(tmp_path):
    rng = np.random.default_rng(1)
    recs = {}
    for cls in ("jump", "wave"):
        (tmp_path / "rec" / cls).mkdir(parents=True)
        for j in range(3):
            recs[f"{cls}/c{j}.dat"] = spikes = (rng.random((20, 10, 16)) < 0.3).astype(np.uint8)
            write_dat(tmp_path / "rec" / cls / f"c{j}.dat", spikes)
    base = ["data", "build", "dat-folder", "--root", str(tmp_path / "rec"), "--dat-height", "10", "--dat-width",
            "16", "--planes", "5", "--height", "8", "--width", "8", "--plane-offset", "2", "--plane-stride", "3",
            "--val-frac", "0", "--test-frac", "0", "--unseen-classes", "1", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "crop"), "--spatial", "crop"]) == 0
    assert main([*base, "--out", str(tmp_path / "sub")]) == 0
    assert read_metadata(tmp_path / "crop")["simulator"] is None
    for split in ("train", "unseen"):
        for crop, sub in zip(SpikeShardDataset(tmp_path / "crop", split), SpikeShardDataset(tmp_path / "sub", split)):
            src = recs[crop["clip_id"]][2:15:3]  # planes 2, 5, 8, 11, 14
            assert np.array_equal(crop["spikes"].numpy(), src[:, 1:9, 4:12])
            rows, cols = [0, 1, 3, 4, 5, 6, 8, 9], [3, 4, 6, 7, 8, 9, 11, 12]  # 10x10 centre, (i + .5) * 1.25 px
            assert np.array_equal(sub["spikes"].numpy(), src[:, rows][:, :, cols])
    assert main([*base, "--out", str(tmp_path / "long"), "--planes", "9"]) == 2  # needs 27 planes, files hold 20
    assert not (tmp_path / "long").exists()


def test_simulate_and_inspect_commands(tmp_path, capsys):
    frames = np.random.default_rng(2).integers(0, 256, (9, 8, 16), np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    assert main(["data", "simulate", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "s.dat"),
                 "--planes-per-frame", "2", "--seed", "4", "--chunk-planes", "3"]) == 0
    assert main(["data", "simulate", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "s.npy"),
                 "--planes-per-frame", "2", "--seed", "4"]) == 0
    expected = simulate_spikes(frames, planes_per_frame=2, seed=4)
    assert np.array_equal(read_dat(tmp_path / "s.dat", 8, 16), expected)
    assert np.array_equal(np.load(tmp_path / "s.npy"), expected)
    assert main(["data", "simulate", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "s.txt")]) == 2
    with pytest.raises(SystemExit):  # an argparse error: the usage line and exit status 2
        main(["data", "simulate", str(tmp_path / "frames.npy"), "--out", str(tmp_path / "z.dat"), "--chunk-planes",
              "0"])
    build(tmp_path, "ds")
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "45 clips of 12 planes x 24 x 24" in out and "unseen 10" in out and "bits per pixel-plane" in out
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2


def test_simulate_command_streams_a_video(tmp_path, capsys):
    frames = np.random.default_rng(5).integers(0, 256, (7, 24, 32, 3), np.uint8)
    write_video(tmp_path / "v.avi", frames)
    assert main(["data", "simulate", str(tmp_path / "v.avi"), "--out", str(tmp_path / "v.npy"), "--height", "16",
                 "--width", "24", "--planes-per-frame", "3", "--max-frames", "5"]) == 0
    assert "5/5" in capsys.readouterr().err  # the progress bar knows its total (the stream's frame count, capped)
    spikes = np.load(tmp_path / "v.npy")
    assert spikes.shape == (15, 16, 24) and set(np.unique(spikes)) <= {0, 1}
    assert main(["data", "simulate", str(tmp_path / "missing.avi"), "--out", str(tmp_path / "m.dat")]) == 2
    assert not (tmp_path / "m.dat").exists()


@pytest.mark.parametrize("extra", [["--motions", "fly"], ["--val-frac", "0.6", "--test-frac", "0.4"],
                                   ["--unseen-classes", "9"], ["--background", "2"], ["--threshold", "0.5"]])
def test_bad_builder_arguments_are_clear_errors(tmp_path, capsys, extra):
    try:  # a flag out of range is an argparse error (exit 2), a bad combination the builder's own (returns 2)
        code = main(["data", "build", "moving-digits", "--out", str(tmp_path / "ds"), *SMALL, *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert "spklip: error:" in capsys.readouterr().err and not (tmp_path / "ds").exists()


@pytest.fixture
def small_smoke(monkeypatch):
    """The smoke dataset at 8 planes of 16 x 16 (the presets' shapes take seconds per build)."""
    monkeypatch.setattr(smoke, "preset_clip_shape", lambda preset: (8, 16, 16))


def test_smoke_data_is_the_cli_build_with_the_smoke_flags(tmp_path, small_smoke):
    ours = read_metadata(build_smoke_data(tmp_path / "smoke", "spklip-tiny"))
    assert main(["data", "build", "moving-digits", "--out", str(tmp_path / "cli"), "--planes", "8", "--height", "16",
                 "--width", "16", *smoke.SMOKE_FLAGS, "--no-progress"]) == 0
    assert ours["fingerprint"] == read_metadata(tmp_path / "cli")["fingerprint"]
    assert ours["clip_shape"] == [8, 16, 16] and ours["splits"] == {"train": 24, "val": 6, "test": 6, "unseen": 18}
    assert len(ours["unseen_classes"]) == 3  # zero-shot over 3 classes, not 1 (where every clip ranks first)


def test_smoke_data_takes_the_clip_shape_of_the_preset():
    spec = smoke_spec("spklip-small")
    assert (spec.num_planes, spec.height, spec.width) == (64, 96, 128)
    assert (spec.digits, spec.motions, spec.clips_per_class) == ((0, 1, 2), ("left", "right", "up"), 6)


def test_ensure_smoke_data_builds_once_and_keeps_real_data(tmp_path, small_smoke, monkeypatch):
    built = ensure_smoke_data(tmp_path / "missing", tmp_path / "runs", "spklip-tiny")
    assert built == tmp_path / "runs" / "data" / "smoke-digits" and read_metadata(built)["num_clips"] == 54
    monkeypatch.setattr(smoke, "build_smoke_data", lambda *a: pytest.fail("built the smoke data twice"))
    assert ensure_smoke_data(tmp_path / "missing", tmp_path / "runs") == built  # already there
    assert ensure_smoke_data(built, tmp_path / "elsewhere") == built  # data.path holds shards: used as it is
    assert not (tmp_path / "elsewhere").exists()


def write_clip(path, frames, codec):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def test_video_folder_says_what_it_skips_and_reads_what_pyav_decodes(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(6)
    root = tmp_path / "videos"
    for cls in ("jump", "wave_hands", "empty", "docs"):
        (root / cls).mkdir(parents=True)
    write_video(root / "jump" / "a.avi", rng.integers(0, 256, (8, 24, 32, 3), np.uint8))
    write_clip(root / "jump" / "b.m4v", rng.integers(0, 256, (8, 24, 32, 3), np.uint8), "mpeg4")
    write_clip(root / "wave_hands" / "c.wmv", rng.integers(0, 256, (8, 24, 32, 3), np.uint8), "wmv2")
    gif = [Image.fromarray(f) for f in rng.integers(0, 256, (8, 24, 32, 3), np.uint8)]
    gif[0].save(root / "wave_hands" / "d.gif", save_all=True, append_images=gif[1:], duration=100)
    (root / "jump" / "notes.txt").write_text("x")
    (root / "docs" / "readme.txt").write_text("x")
    (root / "list.txt").write_text("x")
    base = ["data", "build", "video-folder", "--root", str(root), "--planes", "6", "--height", "12", "--width", "12",
            "--unseen", "wave hands", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "ds")]) == 0
    err = capsys.readouterr().err
    meta = read_metadata(tmp_path / "ds")
    assert meta["class_names"] == ["jump", "wave hands"] and meta["unseen_classes"] == ["wave hands"]
    assert meta["splits"] == {"train": 2, "val": 0, "test": 0, "unseen": 2}  # .m4v, .wmv and .gif are read
    skipped = {s["path"]: s["reason"] for s in meta["skipped"]}
    assert skipped == {str(root / "docs"): "class folder left out: holds no video files (found .txt)",
                       str(root / "empty"): "class folder left out: holds no video files (empty)",
                       str(root / "jump" / "notes.txt"): "not a video file",
                       str(root / "list.txt"): "not a class folder (a file at the top level)"}
    for path, reason in skipped.items():
        assert f"spklip: warning: skipped {path}: {reason}\n" in err
    assert "spklip: warning: class 'jump' has 2 clips: its val and test splits will be empty\n" in err
    assert meta["builder"]["root"] == str(root) and meta["builder"]["unseen"] == ["wave hands"]
    assert not {"dat_height", "dat_width", "plane_offset", "plane_stride", "spatial"} & set(meta["builder"])
    # An unreadable video: refused before any clip is made, with the list; --skip-bad leaves it out and lists it.
    (root / "jump" / "broken.mp4").write_bytes(b"not a video" * 50)
    assert main([*base, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert f"spklip: cannot read {root / 'jump' / 'broken.mp4'}: cannot decode video" in err
    assert "1 of 5 inputs cannot be read" in err and not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "skip"), "--skip-bad"]) == 0
    meta = read_metadata(tmp_path / "skip")
    assert meta["num_clips"] == 4 and str(root / "jump" / "broken.mp4") in {s["path"] for s in meta["skipped"]}


def test_unseen_takes_folder_names_and_class_names(tmp_path):
    for cls in ("bag_moves_up", "BrushHair", "jump"):
        (tmp_path / "rec" / cls).mkdir(parents=True)
        for j in range(2):
            write_dat(tmp_path / "rec" / cls / f"c{j}.dat", np.zeros((4, 8, 8), np.uint8))
    base = ["data", "build", "dat-folder", "--root", str(tmp_path / "rec"), "--dat-height", "8", "--dat-width", "8",
            "--planes", "4", "--height", "8", "--width", "8", "--val-frac", "0", "--test-frac", "0", "--no-progress"]
    for i, unseen in enumerate(["bag_moves_up,BrushHair", "bag moves up,brush hair", "Bag Moves Up,BrushHair"]):
        assert main([*base, "--unseen", unseen, "--out", str(tmp_path / f"ds{i}")]) == 0
        meta = read_metadata(tmp_path / f"ds{i}")
        assert sorted(meta["unseen_classes"]) == ["bag moves up", "brush hair"] and meta["seen_classes"] == ["jump"]
        assert not {"frame_stride", "pad_short"} & set(meta["builder"])
    assert main([*base, "--unseen", "bag moves down", "--out", str(tmp_path / "no")]) == 2


def test_dat_folder_errors_name_the_file_once(tmp_path, capsys):
    (tmp_path / "rec" / "jump").mkdir(parents=True)
    write_dat(tmp_path / "rec" / "jump" / "c0.dat", np.zeros((6, 8, 8), np.uint8))
    base = ["data", "build", "dat-folder", "--root", str(tmp_path / "rec"), "--dat-height", "8", "--dat-width", "8",
            "--val-frac", "0", "--test-frac", "0", "--no-progress", "--out", str(tmp_path / "ds")]
    path = str(tmp_path / "rec" / "jump" / "c0.dat")
    for extra, what in ((["--planes", "9", "--height", "8", "--width", "8"], "6 planes, but planes up to 9"),
                        (["--planes", "4", "--height", "12", "--width", "8", "--spatial", "crop"], "cannot crop")):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert what in err and err.count(path) == err.count("\n") and not (tmp_path / "ds").exists(), err


def test_simulate_covers_and_centre_crops_as_build_does(tmp_path):
    from PIL import Image

    frames = np.random.default_rng(7).integers(0, 256, (5, 24, 32, 3), np.uint8)
    write_video(tmp_path / "v.avi", frames)
    assert main(["data", "simulate", str(tmp_path / "v.avi"), "--out", str(tmp_path / "v.npy"), "--height", "16",
                 "--width", "16", "--seed", "3"]) == 0
    expected = simulate_spikes(read_video(tmp_path / "v.avi", 16, 16), seed=3)  # what video-folder simulates
    assert np.array_equal(np.load(tmp_path / "v.npy"), expected)
    assert main(["data", "simulate", str(tmp_path / "v.avi"), "--out", str(tmp_path / "h.npy"),
                 "--height", "12"]) == 0
    assert np.load(tmp_path / "h.npy").shape == (5, 12, 16)  # one side given: the aspect ratio is kept
    (tmp_path / "imgs").mkdir()
    img = np.zeros((20, 40), np.uint8)
    img[:, 6:34] = 255  # a bright centre band, the whole 10 x 10 once covered and cropped
    Image.fromarray(img).save(tmp_path / "imgs" / "0.png")
    assert main(["data", "simulate", str(tmp_path / "imgs"), "--out", str(tmp_path / "i.npy"), "--height", "10",
                 "--width", "10", "--threshold", "1"]) == 0
    assert np.load(tmp_path / "i.npy").all()  # a stretched image would show the dark sides


def test_a_sensor_size_no_recording_fits_is_one_error(tmp_path, capsys):
    for j in range(3):
        (tmp_path / "rec" / "jump").mkdir(parents=True, exist_ok=True)
        write_dat(tmp_path / "rec" / "jump" / f"c{j}.dat", np.zeros((4, 8, 8), np.uint8))
    assert main(["data", "build", "dat-folder", "--root", str(tmp_path / "rec"), "--dat-height", "5", "--dat-width",
                 "5", "--planes", "2", "--height", "4", "--width", "4", "--out", str(tmp_path / "ds"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not divisible by 8" in err and not (tmp_path / "ds").exists()


def test_frame_count_reads_headers_only(tmp_path):
    from spklip.data.folders import frame_count

    np.save(tmp_path / "f.npy", np.zeros((9, 4, 4), np.uint8))
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    write_video(tmp_path / "v.avi", np.zeros((6, 16, 16, 3), np.uint8))
    assert frame_count(tmp_path / "f.npy") == 9 and frame_count(tmp_path / "f.npy", max_frames=4) == 4
    assert frame_count(tmp_path / "imgs") == 3 and frame_count(tmp_path / "v.avi") == 6
    assert frame_count(tmp_path / "missing.avi") is None  # read_frames reports the missing file, not the count
