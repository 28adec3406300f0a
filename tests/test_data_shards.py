"""Parquet spike shards: round trip, metadata and fingerprint, size-bounded files, schema checks, no partial output."""

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from spklip.data import shards
from spklip.data.loader import SpikeShardDataset
from spklip.data.shards import (Clip, DatasetInfo, ShardError, clip_row, read_metadata, unpack_spikes,
                                validate_shards, write_rows, write_shards)

SHAPE = (6, 8, 5)  # N*H*W = 240, and 5 columns: packing does not need H*W % 8 == 0


def make_clips(n_per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    clips = []
    for label in range(3):  # class 2 is held out
        for j in range(n_per_class):
            split = "unseen" if label == 2 else ("train", "train", "val", "test")[j % 4]
            clips.append(Clip(spikes=(rng.random(SHAPE) < 0.2).astype(np.uint8), label=label,
                              caption=f"class {label} clip {j}", split=split, source=f"rng:{j}",
                              clip_id=f"c{label}-{j}", sim_seed=100 * label + j))
    return clips


INFO = DatasetInfo(kind="test", class_names=["zero", "one", "two"], unseen_labels=[2], clip_shape=SHAPE,
                   simulator={"threshold": 2.0, "planes_per_frame": 1, "mismatch": 0.0, "dark_current": 0.0},
                   builder={"seed": 0})


def test_round_trip_metadata_and_torch_dataset(tmp_path):
    clips = make_clips()
    meta = write_shards(clips, tmp_path / "ds", INFO)
    assert meta == {k: v for k, v in read_metadata(tmp_path / "ds").items()
                    if k not in ("seen_labels", "seen_classes", "unseen_classes")}
    read = validate_shards(tmp_path / "ds")
    assert read["splits"] == {"train": 4, "val": 2, "test": 2, "unseen": 4}
    assert read["seen_classes"] == ["zero", "one"] and read["unseen_classes"] == ["two"]
    assert read["clip_shape"] == list(SHAPE) and read["simulator"]["threshold"] == 2.0
    assert read["bits_per_pixel_plane"] == pytest.approx(8 * read["bytes_on_disk"] / (12 * 240))
    for split in ("train", "val", "test", "unseen"):
        ds = SpikeShardDataset(tmp_path / "ds", split)
        expected = [c for c in clips if c.split == split]
        assert len(ds) == len(expected)
        for item, clip in zip(ds, expected):
            assert item["spikes"].dtype == torch.uint8 and torch.equal(item["spikes"], torch.from_numpy(clip.spikes))
            assert (item["label"].item(), item["caption"], item["clip_id"]) == (clip.label, clip.caption, clip.clip_id)
            assert item["class_name"] == INFO.class_names[clip.label]
    batch = next(iter(torch.utils.data.DataLoader(SpikeShardDataset(tmp_path / "ds", "train"), batch_size=3)))
    assert batch["spikes"].shape == (3, *SHAPE) and batch["label"].dtype == torch.int64
    assert batch["caption"] == [c.caption for c in clips if c.split == "train"][:3]
    row = pq.read_table(tmp_path / "ds" / read["shards"]["unseen"][0]).slice(0, 1).to_pylist()[0]
    assert (row["sim_seed"], row["sim_threshold"], row["source"]) == (200, 2.0, "rng:0")


def test_fingerprint_is_stable_and_content_sensitive(tmp_path):
    a = write_shards(make_clips(), tmp_path / "a", INFO)["fingerprint"]
    b = write_shards(make_clips(), tmp_path / "b", INFO, target_shard_mb=1e-4)["fingerprint"]
    changed = make_clips()
    changed[0].spikes = 1 - changed[0].spikes
    c = write_shards(changed, tmp_path / "c", INFO)["fingerprint"]
    assert a == b != c


def test_rows_packed_ahead_write_the_same_files(tmp_path):
    """`write_rows` of rows packed elsewhere (`clip_row`, a parallel build's workers) is `write_shards` of the clips:
    the same manifest and fingerprint and byte-identical files; a duplicate id is still found by the writer."""
    clips = make_clips()
    a = write_shards(clips, tmp_path / "a", INFO, target_shard_mb=50 / 2**20)  # 2 clips a file
    rows = [clip_row(clip, INFO) for clip in clips]
    b = write_rows(rows, tmp_path / "b", INFO, target_shard_mb=50 / 2**20)
    assert a == b and len(a["shards"]["train"]) > 1
    for files in a["shards"].values():
        for rel in files:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    with pytest.raises(ShardError, match="duplicate clip_id 'c0-0'"):
        write_rows(rows + rows[:1], tmp_path / "c", INFO)
    assert not (tmp_path / "c").exists()


ONE_CLIP_MB = 30 / 2**20  # 30 packed bytes: every clip closes its own file


def same_files(a, b, meta):
    for files in meta["shards"].values():
        for rel in files:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_writer_threads_write_the_files_one_thread_writes(tmp_path, monkeypatch):
    """Files written by background threads are the files (names, bytes, manifest order) written one at a time; two
    writes run at once, and at most `writer_threads` files are ever in flight (memory stays bounded)."""
    rows = [clip_row(clip, INFO) for clip in make_clips(n_per_class=8)]
    one = write_rows(rows, tmp_path / "one", INFO, target_shard_mb=ONE_CLIP_MB, writer_threads=1)
    real, overlap, started, finished = shards._write_file, threading.Barrier(2, timeout=10), [], []

    def slow_write(table, path, rows_per_group):
        started.append(path)
        if len(started) <= 2:
            overlap.wait()  # BrokenBarrierError unless the second write starts while the first one runs
        time.sleep(0.01)
        real(table, path, rows_per_group)
        finished.append(path)

    def feed():
        for i, row in enumerate(rows):  # before row i: files 0..i-1 handed over, at most 2 of them unfinished
            assert len(finished) >= i - 2, (i, len(finished))
            yield row

    monkeypatch.setattr(shards, "_write_file", slow_write)
    two = write_rows(feed(), tmp_path / "two", INFO, target_shard_mb=ONE_CLIP_MB, writer_threads=2)
    assert two == one and len(finished) == 24 and len(two["shards"]["train"]) == 8
    same_files(tmp_path / "one", tmp_path / "two", two)


def test_a_failed_write_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """A write that fails in a writer thread (a full disk) stops the build at the next file with one ShardError
    naming the file; no folder, no temporary folder, and an existing dataset stays as it was."""
    write_shards(make_clips(), tmp_path / "ds", INFO)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    real = shards._write_file

    def full_disk(table, path, rows_per_group):
        if path.parent.name != "train" or path.name != "part-00000.parquet":
            real(table, path, rows_per_group)
        else:
            path.write_bytes(b"PAR1 half a file")  # what a failing write can leave
            raise OSError(28, "No space left on device")

    consumed = []

    def feed():
        for row in [clip_row(clip, INFO) for clip in make_clips(n_per_class=8)]:
            consumed.append(row)
            yield row

    monkeypatch.setattr(shards, "_write_file", full_disk)
    with pytest.raises(ShardError) as e:
        write_rows(feed(), tmp_path / "ds", INFO, target_shard_mb=ONE_CLIP_MB, overwrite=True, writer_threads=1)
    assert str(e.value) == ("cannot write shard train/part-00000.parquet (OSError: [Errno 28] No space left on "
                            "device); no dataset was written")
    assert len(consumed) == 2  # one thread, one file in flight: the second file's hand-over finds the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()} == before

    def every_write_fails(table, path, rows_per_group):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(shards, "_write_file", every_write_fails)
    first = r"^cannot write shard train/part-00000.parquet \(PermissionError: \[Errno 13\] Permission denied\); no"
    with pytest.raises(ShardError, match=first):  # 4 writes failed: the error of the first file, alone
        write_rows(feed(), tmp_path / "new", INFO, target_shard_mb=ONE_CLIP_MB, writer_threads=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_shards_split_at_target_size(tmp_path):
    meta = write_shards(make_clips(n_per_class=8), tmp_path / "ds", INFO, target_shard_mb=70 / 2**20)
    assert len(meta["shards"]["train"]) == 3  # 8 train clips x 30 packed bytes: a file closes at >= 70 bytes
    assert pq.read_metadata(tmp_path / "ds" / meta["shards"]["train"][0]).num_rows == 3
    assert sum(len(SpikeShardDataset(tmp_path / "ds", s)) for s in ("train", "val", "test", "unseen")) == 24


def test_unpack_accepts_arrow_slices_and_bytes():
    spikes = (np.random.default_rng(1).random((5, *SHAPE)) < 0.5).astype(np.uint8)
    packed = [np.packbits(s.reshape(-1), bitorder="little").tobytes() for s in spikes]
    col = pa.array(packed, pa.binary()).slice(1, 3)  # a non-zero offset into the buffers
    assert np.array_equal(unpack_spikes(col, SHAPE), spikes[1:4])
    assert np.array_equal(unpack_spikes(packed, SHAPE), spikes)
    with pytest.raises(ShardError, match="bytes"):
        unpack_spikes(col, (7, 8, 5))


@pytest.mark.parametrize("mutate, match", [
    (lambda c: setattr(c, "spikes", c.spikes[:-1]), "shape"),
    (lambda c: setattr(c, "spikes", c.spikes * 3), "uint8 in"),
    (lambda c: setattr(c, "split", "unseen"), "does not fit label"),
    (lambda c: setattr(c, "split", "training"), "unknown split"),
    (lambda c: setattr(c, "label", 7), "outside"),
    (lambda c: setattr(c, "clip_id", "c0-0"), "duplicate"),
])
def test_bad_clip_is_a_clear_error_and_writes_nothing(tmp_path, mutate, match):
    clips = make_clips()
    mutate(clips[5])
    with pytest.raises(ShardError, match=match):
        write_shards(clips, tmp_path / "ds", INFO, target_shard_mb=1e-5)  # some files were already flushed
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite_and_wrong_schema_is_rejected(tmp_path):
    write_shards(make_clips(), tmp_path / "ds", INFO)
    with pytest.raises(ShardError, match="already exists"):
        write_shards(make_clips(), tmp_path / "ds", INFO)
    write_shards(make_clips(n_per_class=8), tmp_path / "ds", INFO, overwrite=True)
    assert read_metadata(tmp_path / "ds")["num_clips"] == 24 and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ShardError, match="no manifest.json"):
        SpikeShardDataset(tmp_path / "missing", "train")
    manifest = tmp_path / "ds" / "manifest.json"
    meta = json.loads(manifest.read_text())
    first = tmp_path / "ds" / meta["shards"]["train"][0]
    pq.write_table(pq.read_table(first).drop_columns(["caption"]), first)
    with pytest.raises(ShardError, match="'caption'"):
        validate_shards(tmp_path / "ds")
    manifest.write_text(json.dumps({**meta, "schema_version": 0}))
    with pytest.raises(ShardError, match="schema version 0"):
        read_metadata(tmp_path / "ds")


def test_empty_split_is_a_clear_error(tmp_path):
    clips = [c for c in make_clips() if c.split != "val"]
    write_shards(clips, tmp_path / "ds", INFO)
    with pytest.raises(ShardError, match="split 'val' .* is empty"):
        SpikeShardDataset(tmp_path / "ds", "val")
    with pytest.raises(ShardError, match="unknown split"):
        SpikeShardDataset(tmp_path / "ds", "validation")
