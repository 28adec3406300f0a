"""STCL / ClipLoss: value against a hand-written formula, temperature clamp, and 2-worker gradient equivalence."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from spklip.config.model import LossCfg
from spklip.loss import ClipLoss, caption_keys

B, DIN, D = 4, 6, 5  # per-worker batch, encoder input size, embedding size


def _encoders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_s = torch.randn(DIN, D, generator=g).requires_grad_()
    w_t = torch.randn(DIN, D, generator=g).requires_grad_()
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    return w_s, w_t, log_scale


def _data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, DIN, generator=g), torch.randn(n, DIN, generator=g)


def _loss_and_grads(x_s, x_t, cfg, rank=0, world=1, keys=None):
    w_s, w_t, log_scale = _encoders()
    f_s, f_t = F.normalize(x_s @ w_s, dim=-1), F.normalize(x_t @ w_t, dim=-1)
    loss = ClipLoss(cfg, rank, world)(f_s, f_t, log_scale.exp(), keys=keys)["contrastive_loss"]
    loss.backward()
    return loss.detach(), [w_s.grad, w_t.grad, log_scale.grad]


def test_loss_matches_the_symmetric_infonce_formula():
    x_s, x_t = _data(B)
    w_s, w_t, _ = _encoders()
    f_s, f_t = F.normalize(x_s @ w_s, dim=-1), F.normalize(x_t @ w_t, dim=-1)
    sim = 10.0 * f_s @ f_t.T
    p_s, p_t = sim.log_softmax(1), sim.T.log_softmax(1)
    want = -(p_s.diagonal().mean() + p_t.diagonal().mean()) / 2
    got = ClipLoss(LossCfg())(f_s, f_t, torch.tensor(10.0))["contrastive_loss"]
    assert torch.allclose(got, want, atol=1e-6)


def test_logit_scale_is_clamped_at_the_maximum():
    f = F.normalize(torch.randn(B, D), dim=-1)
    loss = ClipLoss(LossCfg(max_logit_scale=100.0))
    assert torch.allclose(loss(f, f, torch.tensor(500.0))["contrastive_loss"],
                          loss(f, f, torch.tensor(100.0))["contrastive_loss"])


KEYS = torch.tensor([3, 1, 3, 0, 1, 1, 2, 3])  # 2 workers x B: classes repeat within and across workers


def _worker(rank, world, port, local_loss, out_dir, keyed=False):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x_s, x_t = _data(world * B)
        rows = slice(rank * B, (rank + 1) * B)
        loss, grads = _loss_and_grads(x_s[rows], x_t[rows], LossCfg(local_loss=local_loss), rank, world,
                                      keys=KEYS[rows] if keyed else None)
        for g in grads:  # what DDP does: average parameter gradients over workers
            dist.all_reduce(g)
            g /= world
        torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("local_loss,keyed", [(False, False), (True, False), (False, True), (True, True)])
def test_two_workers_give_the_gradients_of_one_worker_with_twice_the_batch(tmp_path, local_loss, keyed):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, local_loss, str(tmp_path), keyed), nprocs=2, join=True)
    x_s, x_t = _data(2 * B)
    want_loss, want = _loss_and_grads(x_s, x_t, LossCfg(local_loss=local_loss), keys=KEYS if keyed else None)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for g, w in zip(got["grads"], want):
            assert torch.allclose(g, w, atol=1e-5), (rank, (g - w).abs().max())
        if not local_loss:  # the full form computes the global-batch loss on every rank
            assert torch.allclose(got["loss"], want_loss, atol=1e-6)


def _multi_positive_reference(f_s, f_t, scale, keys):
    """Row by row: each row's target is uniform over the columns with its key, both directions averaged."""
    sim = scale * f_s @ f_t.T
    total = 0.0
    for logits in (sim, sim.T):
        rows = []
        for i in range(len(keys)):
            pos = [j for j in range(len(keys)) if keys[j] == keys[i]]
            logp = logits[i].log_softmax(0)
            rows.append(-sum(logp[j] for j in pos) / len(pos))
        total = total + torch.stack(rows).mean()
    return total / 2


def test_multi_positive_loss_matches_a_row_by_row_reference():
    x_s, x_t = _data(8)
    w_s, w_t, _ = _encoders()
    f_s, f_t = F.normalize(x_s @ w_s, dim=-1), F.normalize(x_t @ w_t, dim=-1)
    got = ClipLoss(LossCfg())(f_s, f_t, torch.tensor(10.0), keys=KEYS)["contrastive_loss"]
    torch.testing.assert_close(got, _multi_positive_reference(f_s, f_t, 10.0, KEYS.tolist()))
    clip = ClipLoss(LossCfg())(f_s, f_t, torch.tensor(10.0))["contrastive_loss"]
    assert not torch.allclose(got, clip)  # repeated keys change the targets


def test_distinct_captions_give_exactly_the_clip_loss():
    x_s, x_t = _data(B)
    w_s, w_t, _ = _encoders()
    f_s, f_t = F.normalize(x_s @ w_s, dim=-1), F.normalize(x_t @ w_t, dim=-1)
    keys = caption_keys(["a cat", "a dog", "a car", "a cup"])
    torch.testing.assert_close(ClipLoss(LossCfg())(f_s, f_t, torch.tensor(10.0), keys=keys)["contrastive_loss"],
                               ClipLoss(LossCfg())(f_s, f_t, torch.tensor(10.0))["contrastive_loss"])


def test_caption_keys_are_equal_exactly_for_equal_strings():
    keys = caption_keys(["the digit one moves left", "the digit one moves right", "the digit one moves left"])
    assert keys.dtype == torch.int64 and keys[0] == keys[2] and keys[0] != keys[1]
    assert torch.equal(keys, caption_keys(["the digit one moves left", "the digit one moves right",
                                           "the digit one moves left"]))  # stable (hashlib, not hash())
