"""Ray Data loader: exactly the written tensors come back, per-epoch seeded shuffling, streaming_split for workers."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from spklip.data.loader import ray_dataset, torch_batches
from spklip.data.shards import ShardError, write_shards
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
    ds = ray_dataset(root, "train")
    decoded = ray_dataset(root, "train", materialize=True)  # decoded once, each epoch only iterates
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

    parts = ds.streaming_split(2, equal=True)  # what Ray Train does for two workers
    with ThreadPoolExecutor(2) as pool:  # the parts of a streaming split must be consumed concurrently
        seen = list(pool.map(lambda p: list(collect(torch_batches(p, 4, epoch=0))), parts))
    assert len(seen[0]) == len(seen[1]) == len(expected) // 2
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(expected)


def test_empty_split_fails_before_ray_runs(shards):
    root, _ = shards
    with pytest.raises(ShardError, match="unknown split"):
        ray_dataset(root, "dev")
