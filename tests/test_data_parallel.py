"""Parallel builds (`--workers`, a Ray Data pipeline): the same dataset, fingerprint and shard files as the
one-process build, whatever the parallelism; a bad input is the same one-line error, with nothing left behind."""

import functools

import numpy as np
import pytest

from spklip.cli import main
from spklip.data.build import build_dataset, part_rows, plan_dataset
from spklip.data.moving_digits import DigitsSpec, digit_clips
from spklip.data.parallel import serial_map
from spklip.runtime.parallel import ray_mapper
from spklip.data.shards import clip_row, read_metadata, read_shard
from spklip.data.simulate import SimParams
from test_data_builders import SMALL, write_video


def same_dataset(a, b):
    """Same manifest (fingerprint, shard files in order, sizes), byte-identical shard files, the same rows in them."""
    ma, mb = read_metadata(a), read_metadata(b)
    assert ma == mb
    for files in ma["shards"].values():
        for rel in files:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
            assert read_shard(a / rel).equals(read_shard(b / rel)), rel
    return ma


def test_the_plan_makes_the_clips_digit_clips_yields():
    spec = DigitsSpec(num_planes=6, height=12, width=12, digits=(0, 1), motions=("left", "grow"), clips_per_class=3)
    sim = SimParams(seed=2)
    plan = plan_dataset("moving-digits", spec, sim)
    _, reference, total = digit_clips(spec, sim)
    ours = list(serial_map(plan.make, plan.parts))
    assert plan.total == total == len(ours) == 12
    for a, b in zip(ours, reference):
        assert (a.clip_id, a.split, a.caption, a.source, a.sim_seed) == (b.clip_id, b.split, b.caption, b.source,
                                                                         b.sim_seed)
        assert np.array_equal(a.spikes, b.spikes)


def test_workers_pack_the_rows_the_driver_packs(ray_session):
    """The rows the Ray workers pack (check, bit-pack, hash) are the rows a one-process build packs from its clips."""
    spec = DigitsSpec(num_planes=6, height=12, width=12, digits=(0, 1), motions=("left", "grow"), clips_per_class=3)
    plan = plan_dataset("moving-digits", spec, SimParams(seed=2))
    rows = functools.partial(part_rows, plan.make, plan.info)
    with ray_mapper(workers=2) as pmap:
        packed_by_workers = list(pmap(rows, plan.parts))
    _, clips, _ = digit_clips(spec, SimParams(seed=2))
    packed_serially = [clip_row(clip, plan.info) for clip in clips]
    assert len(packed_by_workers) == 12 and packed_by_workers == packed_serially  # every column and the digest
    assert packed_by_workers == list(serial_map(rows, plan.parts))


def test_moving_digits_with_two_workers_is_the_serial_build(tmp_path, ray_session):
    args = ["data", "build", "moving-digits", *SMALL, "--shard-mb", "0.001"]  # several files per split
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    assert main([*args, "--out", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    meta = same_dataset(tmp_path / "serial", tmp_path / "parallel")  # files written by the driver's threads
    assert meta["num_clips"] == 45 and all(len(files) > 1 for files in meta["shards"].values())


def test_video_folder_with_two_workers_is_the_serial_build(tmp_path, ray_session, capsys):
    rng = np.random.default_rng(4)
    for cls in ("jump", "wave", "run"):
        (tmp_path / "videos" / cls).mkdir(parents=True)
        for j in range(3):
            write_video(tmp_path / "videos" / cls / f"v{j}.avi", rng.integers(0, 256, (8, 20, 28, 3), np.uint8))
    spec_args = dict(num_planes=8, height=12, width=12, unseen=("run",), val_frac=0.0, test_frac=0.34, seed=5)
    from spklip.data.folders import FolderSpec

    spec = FolderSpec(root=str(tmp_path / "videos"), **spec_args)
    sim = SimParams(planes_per_frame=2, seed=5)
    build_dataset(tmp_path / "serial", "video-folder", spec, sim)
    with ray_mapper(workers=2) as pmap:
        build_dataset(tmp_path / "parallel", "video-folder", spec, sim, pmap=pmap)
    meta = same_dataset(tmp_path / "serial", tmp_path / "parallel")
    assert meta["splits"] == {"train": 4, "val": 0, "test": 2, "unseen": 3}
    # A video that is too short fails in a worker: the user sees its one-line error, not Ray's, and no folder.
    base = ["data", "build", "video-folder", "--root", str(tmp_path / "videos"), "--planes", "40", "--height", "12",
            "--width", "12", "--no-progress", "--workers", "2"]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "short")]) == 2
    err = capsys.readouterr().err
    assert "spklip: error:" in err and "frames, but 40 frames at stride 1 are needed" in err
    assert "Traceback" not in err and "RayTaskError" not in err
    assert not (tmp_path / "short").exists()
    # The input check runs on the workers too: an unreadable file is listed before any clip is made.
    (tmp_path / "videos" / "wave" / "broken.mp4").write_bytes(b"not a video" * 50)
    assert main([*base, "--planes", "8", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "1 of 10 inputs cannot be read" in err and f"cannot read {tmp_path}/videos/wave/broken.mp4: cannot" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bad", [["--workers", "0"]])
def test_bad_worker_counts_are_clear_errors(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:  # a range-checked flag: argparse's one line and exit 2 (spklip.cliargs)
        main(["data", "build", "moving-digits", "--out", str(tmp_path / "ds"), *SMALL, *bad])
    assert e.value.code == 2
    assert "--workers: must be an integer >= 1" in capsys.readouterr().err and not (tmp_path / "ds").exists()
