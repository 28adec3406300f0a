"""The pure-torch loop, schedule and checkpoint format (no Ray): exact resume, accumulation, weights-only loading."""

import math
import time

import pytest
import torch
from torch import nn

from spklip.config import load_config
from spklip.loss import ClipLoss
from spklip.model import create_model
from spklip.train.checkpoint import (TrainState, model_from_checkpoint, read_checkpoint, restore_training,
                                     save_checkpoint)
from spklip.runtime.epoch_eval import evaluates_after
from spklip.train.loop import Loop, run_training, seed_everything, train_epoch
from spklip.train.schedule import lr_factor

SMALL = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1", "optim.warmup_steps=2", "optim.lr=1e-3"]


def test_warmup_then_cosine_to_the_floor():
    f = [lr_factor(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear ramp
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)  # cosine midpoint: floor + half the range
    assert f[110] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[10:], f[11:]))


def _batches(n, seed=0, b=4):
    gen = torch.Generator().manual_seed(seed)
    return [{"spikes": (torch.rand(b, 16, 32, 32, generator=gen) < 0.2).to(torch.uint8),
             "caption": [f"a spike video of a digit {int(i)} moving" for i in torch.randint(0, 5, (b,), generator=gen)],
             "label": torch.zeros(b, dtype=torch.long)} for _ in range(n)]


def _fresh_loop(cfg, total_steps=4):
    seed_everything(cfg.train.seed)
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    return Loop.create(cfg, model, ClipLoss(cfg.loss), torch.device("cpu"), total_steps)


def test_evaluated_epochs_are_every_nth_and_the_last():
    cfg = load_config("configs/tiny.yaml", ["train.epochs=7", "eval.every_epochs=3"])
    assert [e for e in range(1, 8) if evaluates_after(cfg, e, step=10 * e)] == [3, 6, 7]
    capped = load_config("configs/tiny.yaml", ["train.epochs=100", "eval.every_epochs=3", "train.max_steps=45"])
    assert [e for e in range(1, 6) if evaluates_after(capped, e, step=min(10 * e, 45))] == [3, 5]  # 5: max_steps
    every = load_config("configs/tiny.yaml", ["train.epochs=3", "eval.every_epochs=1"])
    assert all(evaluates_after(every, e, step=e) for e in (1, 2, 3))


def test_resume_from_a_checkpoint_continues_the_same_loss_curve(tmp_path):
    # dropout: RNG matters; augmentation (on by default) must draw the same shifts after the resume
    cfg = load_config(overrides=SMALL + ["train.epochs=2", "model.temporal.dropout=0.2"])
    data = _batches(2, b=3)
    full = []
    loop = _fresh_loop(cfg)
    run_training(loop, TrainState(), lambda e: data, lambda s, m: full.append(m["loss"]), lambda s: None)

    part = []
    loop = _fresh_loop(cfg)
    state = TrainState()
    saved = {}

    def stop_after_3(s, m):
        part.append(m["loss"])
        if s.step == 3:  # mid-epoch 2: save, then pretend the worker died
            save_checkpoint(tmp_path / "ck", model=loop.model, cfg=cfg, state=s, optimizer=loop.optimizer,
                            scheduler=loop.scheduler)
            saved["done"] = True
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(loop, state, lambda e: data, stop_after_3, lambda s: None)
    torch.manual_seed(1234)  # a restarted worker starts from other RNG state; the checkpoint must restore it
    loop = _fresh_loop(load_config(overrides=SMALL + ["train.epochs=2", "train.seed=7",
                                                      "model.temporal.dropout=0.2"]))
    loop.cfg = cfg
    state = restore_training(read_checkpoint(tmp_path / "ck"), model=loop.model, optimizer=loop.optimizer,
                             scheduler=loop.scheduler)
    assert (state.step, state.epoch, state.batch_in_epoch) == (3, 1, 1)
    run_training(loop, state, lambda e: data, lambda s, m: part.append(m["loss"]), lambda s: None)
    assert len(full) == len(part) == 4
    assert part == pytest.approx(full, abs=1e-5)


class _TwoTower(nn.Module):
    """A minimal two-tower module with the Spklip forward contract, for loop mechanics with a per-sample loss."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16 * 32 * 32, 4)

    def forward(self, spikes, texts):
        feats = self.proj(spikes.float().flatten(1))  # [B, 4]
        return {"spike_features": feats, "text_features": torch.zeros_like(feats), "logit_scale": torch.tensor(1.0)}


def _mse(spike_features, text_features, logit_scale, keys=None):
    return {"mse_loss": ((spike_features - 1.0) ** 2).mean()}


def test_gradient_accumulation_equals_one_big_batch():
    data8 = _batches(1, b=8)
    data4 = [{k: v[:4] for k, v in data8[0].items()}, {k: v[4:] for k, v in data8[0].items()}]
    weights = []
    for accum, data in ((1, data8), (2, data4)):
        cfg = load_config(overrides=SMALL + [f"optim.accum_steps={accum}", "optim.grad_clip=0", "augment.time_shift=0",
                                             "augment.shift_px=0"])  # the micro-batches would draw other shifts
        torch.manual_seed(0)
        model = _TwoTower()
        loop = Loop.create(cfg, model, _mse, torch.device("cpu"), 10)
        state = TrainState()
        train_epoch(loop, data, state, lambda s, m: None)
        assert state.step == 1 and state.batch_in_epoch == len(data)
        weights.append(model.proj.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_max_steps_stops_early_and_clipping_bounds_the_update():
    cfg = load_config(overrides=SMALL + ["train.max_steps=2", "optim.grad_clip=1e-3", "train.epochs=5"])
    torch.manual_seed(0)
    loop = Loop.create(cfg, _TwoTower(), _mse, torch.device("cpu"), 2)
    norms = []
    state = run_training(loop, TrainState(), lambda e: _batches(3, b=2), lambda s, m: norms.append(m["grad_norm"]),
                         lambda s: None)
    assert state.step == 2 and state.epoch == 1 and len(norms) == 2
    assert norms[0] > 1e-3  # the raw norm is reported; the applied update was clipped
    assert not math.isnan(norms[1])


def test_the_loop_times_data_waits_and_steps_apart():
    cfg = load_config(overrides=SMALL + ["train.epochs=1"])
    torch.manual_seed(0)
    loop = Loop.create(cfg, _TwoTower(), _mse, torch.device("cpu"), 3)

    def slow_batches(epoch):
        for batch in _batches(3, b=2):
            time.sleep(0.05)  # the data source's wait
            yield batch

    def slow_hook(s, m):
        time.sleep(0.2)  # a hook's time (logging, a checkpoint) is neither data nor step

    t = time.perf_counter()
    run_training(loop, TrainState(), slow_batches, slow_hook, lambda s: None)
    wall = time.perf_counter() - t
    seconds = loop.phases.take()
    assert set(seconds) == {"data", "step"} and seconds["step"] > 0
    assert 0.15 <= seconds["data"] < 0.15 + 0.1  # three waits of 0.05 s
    assert seconds["data"] + seconds["step"] <= wall - 0.6  # the three hook calls are outside both
    assert loop.phases.take() == {}  # taking resets


def test_checkpoint_rebuilds_the_model_alone(tmp_path):
    cfg = load_config(overrides=SMALL)
    loop = _fresh_loop(cfg)
    train_epoch(loop, _batches(1), TrainState(), lambda s, m: None)
    save_checkpoint(tmp_path / "ck", model=loop.model, cfg=cfg, state=TrainState(step=1), optimizer=loop.optimizer)
    rebuilt, cfg2, payload = model_from_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and payload["step"] == 1
    x = _batches(1)[0]["spikes"]
    loop.model.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt.encode_spikes(x), loop.model.encode_spikes(x), atol=1e-6)
    frozen = [n for n, p in rebuilt.named_parameters() if not p.requires_grad]
    assert frozen and not set(frozen) & set(payload["model"])  # the frozen text tower is not stored


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path / "nothing")
    torch.save({"format": 99}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="format"):
        read_checkpoint(tmp_path)


def test_the_loop_augments_each_micro_batch_as_a_function_of_seed_rank_epoch_and_index():
    cfg = load_config(overrides=SMALL)
    loop = _fresh_loop(cfg)
    batch = _batches(1)[0]
    a, _ = loop.augment(batch, epoch=0, index=0)
    assert not torch.equal(a, batch["spikes"])  # augmentation is on by default
    assert torch.equal(a, loop.augment(batch, epoch=0, index=0)[0])
    assert not torch.equal(a, loop.augment(batch, epoch=0, index=1)[0])
    assert not torch.equal(a, loop.augment(batch, epoch=1, index=0)[0])
    loop.rank = 1
    assert not torch.equal(a, loop.augment(batch, epoch=0, index=0)[0])
    off = _fresh_loop(load_config(overrides=SMALL + ["augment.time_shift=0", "augment.shift_px=0"]))
    assert torch.equal(off.augment(batch, 0, 0)[0], batch["spikes"])
