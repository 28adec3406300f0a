"""The Ray Data reader (spklip.runtime.reader): exactly the written tensors come back, per-epoch seeded shuffling,
streaming_split for workers, page checksums verified."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from spklip.config import load_config
from spklip.data.shards import ShardError, write_shards
from spklip.runtime import reader as train_data
from spklip.runtime.reader import torch_batches
from test_data_checksums import _flip_in_a_page
from test_data_shards import INFO, make_clips


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "ds"
    clips = make_clips(n_per_class=20)
    write_shards(clips, root, INFO, target_shard_mb=300 / 2**20)  # several files per split
    return root, {c.clip_id: c for c in clips if c.split == "train"}


def collect(batches):
    out = {}
    for b in batches:
        assert b["spikes"].dtype == torch.uint8 and b["label"].dtype == torch.int64
        for i, cid in enumerate(b["clip_id"]):
            out[cid] = (b["spikes"][i], int(b["label"][i]), b["caption"][i], b["class_name"][i])
    return out


@pytest.mark.slow  # two Ray Data executions: 30-160 s on 2 shared cores (load 15-57), plus the shared ray.init
def test_ray_loader_yields_the_written_tensors_shuffled_per_epoch(ray_session, shards):
    root, expected = shards
    ds = train_data.ray_train_dataset(load_config(overrides=[f"data.path={root}", "data.materialize=false"]))
    decoded = train_data.ray_train_dataset(load_config(overrides=[f"data.path={root}", "data.materialize=true"]))
    epochs = [list(torch_batches(decoded, 4, epoch=e, seed=0)) for e in (0, 1)]
    for batches in epochs:
        got = collect(batches)
        assert set(got) == set(expected)
        for cid, (spikes, label, caption, class_name) in got.items():
            clip = expected[cid]
            assert torch.equal(spikes, torch.from_numpy(clip.spikes))
            assert (label, caption, class_name) == (clip.label, clip.caption, INFO.class_names[clip.label])
    order = [[cid for b in batches for cid in b["clip_id"]] for batches in epochs]
    assert order[0] != order[1]  # a new order each epoch
    again = [cid for b in torch_batches(decoded, 4, epoch=1, seed=0) for cid in b["clip_id"]]
    assert again == order[1]  # the same (seed, epoch): the same order

    parts = ds.streaming_split(2, equal=True)  # what Ray Train does for two workers
    with ThreadPoolExecutor(2) as pool:  # the parts of a streaming split must be consumed concurrently
        seen = list(pool.map(lambda p: list(collect(torch_batches(p, 4, epoch=0))), parts))
    assert len(seen[0]) == len(seen[1]) == len(expected) // 2
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(expected)


def test_empty_split_fails_before_ray_runs(shards):
    root, _ = shards
    cfg = load_config(overrides=[f"data.path={root}", "data.materialize=false"])
    with pytest.raises(ShardError, match="unknown split"):
        train_data.streaming_dataset(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_split="dev")))


@pytest.mark.slow  # two streamed epochs and a failing read: 20-60 s on 2 shared cores
def test_the_streaming_train_set_is_built_once_and_reshuffled_per_epoch(ray_session, tmp_path, built_datasets):
    root = tmp_path / "ds"
    clips = make_clips(n_per_class=20)
    write_shards(clips, root, INFO, target_shard_mb=100 / 2**20)  # a file per few clips: the unit of the file order
    expected = {c.clip_id for c in clips if c.split == "train"}
    cfg = load_config(overrides=[f"data.path={root}", "data.batch_size=2", "data.materialize=false"])
    ds = train_data.ray_train_dataset(cfg)
    assert built_datasets == {"streaming": 1}
    assert "RandomShuffle" not in str(ds)  # no all-to-all pass over the clips each epoch

    def worker(part):  # what a Train worker does with its shard: the same iterator, epoch after epoch
        return [[cid for b in train_data.train_batches(part, cfg, epoch) for cid in b["clip_id"]] for epoch in (0, 1)]

    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(worker, ds.streaming_split(2, equal=True)))
    for epoch in (0, 1):
        a, b = seen[0][epoch], seen[1][epoch]
        assert set(a).isdisjoint(b) and set(a) | set(b) == expected
    assert seen[0][0] + seen[1][0] != seen[0][1] + seen[1][1]  # another order in the second epoch
    assert built_datasets == {"streaming": 1}  # iterating built nothing more

    bad = sorted((root / "train").glob("*.parquet"))[1]
    _flip_in_a_page(bad)
    with pytest.raises(Exception) as e:
        list(train_data.train_batches(train_data.ray_train_dataset(cfg), cfg, 0))
    error = train_data.data_error_in(e.value)
    assert error is not None and str(error).startswith(f"{bad}: corrupted Parquet shard"), e.value
