"""One data-reading path (spklip.data.read): every non-Ray read gives the same clips in the same batch dict, and
`to_torch` never lets a tensor alias a read-only buffer."""

import warnings

import numpy as np
import torch

from spklip.data.loader import SpikeShardDataset, epoch_batches
from spklip.data.read import decoded_split, eval_batches, read_split, sample_batches, to_torch
from spklip.data.shards import write_shards
from test_data_shards import INFO, SHAPE, make_clips

KEYS = {"spikes", "label", "caption", "class_name", "clip_id"}


def test_every_read_gives_the_same_clips_as_the_torch_dataset(tmp_path):
    clips = make_clips(n_per_class=8)
    write_shards(clips, tmp_path / "ds", INFO)
    for split in ("train", "unseen"):
        expected = [c for c in clips if c.split == split]
        ds = SpikeShardDataset(tmp_path / "ds", split)
        assert read_split(tmp_path / "ds", split).num_rows == len(ds) == len(expected)
        streamed = list(eval_batches(tmp_path / "ds", split, batch_size=3))
        assert all(set(b) == KEYS for b in streamed) and [len(b["caption"]) for b in streamed][0] == 3
        whole = to_torch(decoded_split(tmp_path / "ds", split))
        assert set(whole) == KEYS and whole["spikes"].dtype == torch.uint8 and whole["label"].dtype == torch.int64
        assert torch.equal(torch.cat([b["spikes"] for b in streamed]), whole["spikes"])
        assert whole["clip_id"] == [c.clip_id for c in expected] == [ds[i]["clip_id"] for i in range(len(ds))]
        assert torch.equal(whole["spikes"], torch.stack([ds[i]["spikes"] for i in range(len(ds))]))
        assert whole["spikes"].shape == (len(expected), *SHAPE)
    sample = list(sample_batches(tmp_path / "ds", "train", num_batches=2, batch_size=2, seed=0))
    assert [set(b) for b in sample] == [KEYS, KEYS]
    train = {c.clip_id: c for c in clips if c.split == "train"}
    for b in sample:  # a sampled clip is decoded exactly as stored
        for spikes, clip_id in zip(b["spikes"], b["clip_id"]):
            assert torch.equal(spikes, torch.from_numpy(train[clip_id].spikes))


def test_epoch_batches_match_the_decoded_split_cut_in_the_seeded_order(tmp_path):
    """The in-process reader (`spklip train` in local mode, `train_in_process`) decodes a batch at a time what the
    slow reference cuts from the whole decoded split: the ``(seed, epoch)`` permutation, full batches only; each epoch
    its own order, the same on every call (a resumed run sees the same batches)."""
    clips = make_clips(n_per_class=8)
    write_shards(clips, tmp_path / "ds", INFO)
    ds, whole = SpikeShardDataset(tmp_path / "ds", "train"), to_torch(decoded_split(tmp_path / "ds", "train"))
    n, bs = len(ds), 5
    assert n % bs  # a last, smaller batch exists and must be dropped
    orders = []
    for epoch in (0, 1):
        batches = list(epoch_batches(ds, bs, epoch, seed=3))
        order = np.random.default_rng([3, epoch]).permutation(n)  # the reference
        assert len(batches) == n // bs and all(set(b) == KEYS for b in batches)
        for i, b in enumerate(batches):
            idx = order[i * bs:(i + 1) * bs]
            assert torch.equal(b["spikes"], whole["spikes"][idx]) and torch.equal(b["label"], whole["label"][idx])
            assert b["caption"] == [whole["caption"][j] for j in idx]
            assert b["clip_id"] == [whole["clip_id"][j] for j in idx]
        again = list(epoch_batches(ds, bs, epoch, seed=3))
        assert [b["clip_id"] for b in again] == [b["clip_id"] for b in batches]
        orders.append([c for b in batches for c in b["clip_id"]])
    assert orders[0] != orders[1]
    in_file_order = [c for b in epoch_batches(ds, bs, 0, shuffle=False) for c in b["clip_id"]]
    assert in_file_order == whole["clip_id"][:n // bs * bs]


def test_to_torch_copies_read_only_columns_and_keeps_fresh_ones():
    spikes = (np.random.default_rng(0).random((2, *SHAPE)) < 0.5).astype(np.uint8)
    cols = {"spikes": spikes, "label": np.array([0, 1]), "caption": np.array(["a", "b"], dtype=object),
            "class_name": np.array(["x", "y"], dtype=object), "clip_id": np.array(["i", "j"], dtype=object)}
    fresh = to_torch(cols)
    assert np.shares_memory(fresh["spikes"].numpy(), spikes)  # freshly decoded spikes: no copy
    frozen = spikes.copy()
    frozen.flags.writeable = False  # as Ray's object store and Arrow hand them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a non-writable array
        out = to_torch({**cols, "spikes": frozen, "label": cols["label"].astype(np.int32)})
    assert not np.shares_memory(out["spikes"].numpy(), frozen) and torch.equal(out["spikes"], fresh["spikes"])
    assert out["label"].dtype == torch.int64 and out["caption"] == ["a", "b"] and out["clip_id"] == ["i", "j"]
    out["spikes"][0] = 1  # writable, and the frozen buffer is untouched
    assert not frozen.all()
