"""The GPU path, tested on the CPU where no GPU is: a checkpoint read for another device keeps its RNG states on the
CPU; batches go to a CUDA device pinned and non-blocking; cudnn.benchmark, channels_last and torch.compile are set
by `spklip.train.loop.prepare_for_device` as ``train.*`` asks, each only where it applies."""

import random

import numpy as np
import pytest
import torch

from spklip.config import load_config
from spklip.loss import ClipLoss
from spklip.model import create_model
from spklip.torchutil import to_device
from spklip.runtime import reader as train_data
from spklip.train.checkpoint import (TrainState, place_payload, read_checkpoint, rng_state, save_checkpoint,
                                     set_rng_state)
from spklip.train.loop import Loop, prepare_for_device, resolve_channels_last, seed_everything

SMALL = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1"]


def _rng_tensors(rng: dict) -> list[torch.Tensor]:
    return [rng["torch"], rng["numpy"]["keys"], *rng.get("cuda", [])]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()  # an optimizer state with tensors (exp_avg, step)
    return save_checkpoint(tmp_path / "ck", model=model, cfg=load_config(), state=TrainState(step=3),
                           optimizer=opt)


def test_a_checkpoint_read_for_another_device_keeps_its_rng_states_on_the_cpu(saved):
    payload = read_checkpoint(saved, map_location="meta")  # "another device" that exists without a GPU
    assert all(t.device.type == "meta" for t in payload["model"].values())  # the weights did move
    for t in _rng_tensors(payload["rng"]):
        assert t.device.type == "cpu"
    assert payload["rng"]["torch"].dtype == torch.uint8
    exp_avg = payload["optimizer"]["state"][0]["exp_avg"]
    assert exp_avg.device.type == "cpu"  # Optimizer.load_state_dict places it itself
    set_rng_state(payload["rng"])  # what restore_training does: a meta or CUDA state would raise here
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(payload["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


def test_place_payload_moves_the_weights_and_never_an_rng_state():
    payload = {"model": {"w": torch.ones(3)}, "rng": rng_state(), "optimizer": {"state": {0: {"m": torch.ones(2)}}},
               "scheduler": None, "step": 1}
    payload["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # 2 GPUs' states
    placed = place_payload(payload, "meta")
    assert placed["model"]["w"].device.type == "meta"
    for t in _rng_tensors(placed["rng"]):
        assert t.device.type == "cpu" and (t.dtype == torch.uint8 or t is placed["rng"]["numpy"]["keys"])
    assert placed["optimizer"]["state"][0]["m"].device.type == "cpu"
    assert place_payload(payload, "cpu") is payload  # nothing to move


def test_to_device_pins_and_copies_without_blocking_only_for_cuda(monkeypatch):
    t = torch.arange(6, dtype=torch.uint8)
    assert to_device(t, "cpu") is t  # CPU: a plain .to, no pinning
    calls = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append((str(a[0]), k)) or self)
    to_device(t, "cuda")
    assert calls == ["pin", ("cuda", {"non_blocking": True})]


def test_the_loop_moves_batches_through_to_device(monkeypatch):
    cfg = load_config(overrides=SMALL + ["augment.time_shift=0", "augment.shift_px=0", "loss.positives=label"])
    loop = Loop.create(cfg, create_model(cfg.model, loss_cfg=cfg.loss), ClipLoss(cfg.loss), torch.device("cpu"), 2)
    moved = []
    import spklip.train.loop as loop_module

    monkeypatch.setattr(loop_module, "to_device", lambda t, d: moved.append((t.dtype, d)) or t.to(d))
    batch = {"spikes": torch.zeros(2, 16, 32, 32, dtype=torch.uint8), "caption": ["a", "b"],
             "label": torch.tensor([0, 1])}
    loop.augment(batch, 0, 0)
    loop.pair_keys(batch, ["a", "b"])
    assert moved == [(torch.uint8, torch.device("cpu")), (torch.int64, torch.device("cpu"))]


def test_train_batches_stay_on_the_cpu_for_the_loop_to_move(monkeypatch):
    seen = {}
    monkeypatch.setattr(train_data, "torch_batches", lambda *a, **k: seen.update(k) or iter([{"spikes": 1}]))
    assert list(train_data.train_batches(object(), load_config(), 0)) == [{"spikes": 1}]
    assert seen["device"] == "cpu" and seen["drop_last"] is True


def _model(overrides=()):
    cfg = load_config(overrides=SMALL + list(overrides))
    seed_everything(0)
    return cfg, create_model(cfg.model, loss_cfg=cfg.loss)


@pytest.fixture
def cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cudnn.benchmark = before


def test_cuda_options_are_set_only_for_a_cuda_device(cudnn_benchmark):
    assert [resolve_channels_last(s, torch.device(d)) for s in ("auto", True, False) for d in ("cpu", "cuda")] == \
        [False, True, True, True, False, False]
    cfg, model = _model()
    assert prepare_for_device(model, cfg.train, torch.device("cpu")) == {"cudnn_benchmark": False,
                                                                         "channels_last": False, "compile": False}
    assert not torch.backends.cudnn.benchmark
    assert model.visual.subblocks.hsfe.fuse.weight.is_contiguous()  # NCHW weights on a CPU under auto
    cfg, model = _model()
    # a CUDA device that is never used: Loop.create only sets the options (the model stays where it is)
    Loop.create(cfg, model, ClipLoss(cfg.loss), torch.device("cuda"), 2)
    assert torch.backends.cudnn.benchmark
    assert prepare_for_device(model, cfg.train, torch.device("cuda"))["channels_last"]  # idempotent: the same answer
    w = model.visual.subblocks.hsfe.fuse.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert model.visual.subblocks.hsfe.force_channels_last
    cfg_snn = load_config(overrides=["model_preset=spklip-tiny-full-snn", *SMALL])
    snn = create_model(cfg_snn.model, loss_cfg=cfg_snn.loss)
    assert not prepare_for_device(snn, cfg_snn.train, torch.device("cuda"))["channels_last"]  # spiking: left alone


def test_channels_last_training_gives_the_same_outputs_and_gradients():
    """In float64, so that the comparison is exact up to rounding (in fp32 oneDNN's NHWC and NCHW kernels sum in
    other orders, and training BatchNorm over a tiny batch amplifies that to ~1e-3 relative in some gradients)."""
    _, ref = _model()
    _, nhwc = _model()
    assert prepare_for_device(nhwc, load_config(overrides=SMALL + ["train.channels_last=true"]).train,
                              torch.device("cpu"))["channels_last"]
    gen = torch.Generator().manual_seed(1)
    spikes = (torch.rand(2, 16, 32, 32, generator=gen) < 0.2).double()
    weights = torch.randn(2, ref.cfg.embed_dim, generator=gen, dtype=torch.float64)  # a loss with rich gradients
    layouts = []
    hook = nhwc.visual.backbone.stem[0][0].register_forward_hook(
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    outs = []
    for model in (ref, nhwc):
        model.visual.double().train()
        out = model.visual(spikes)
        (out * weights).sum().backward()
        outs.append(out.detach())
    hook.remove()
    assert layouts == [True]  # the backbone's first conv got NHWC maps
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-10)
    grads = dict(nhwc.visual.named_parameters())
    for name, p in ref.visual.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.slow
def test_compiled_visual_tower_trains_two_steps_like_the_eager_one():
    """``train.compile=true`` on a CPU: torch.compile (Inductor, C++) of spklip-tiny's visual tower at 16x32x32; two
    optimiser steps give the eager run's losses; the state_dict keys are unchanged (checkpoints load either way)."""
    losses = {}
    for compiled in (False, True):
        cfg = load_config(overrides=SMALL + ["augment.time_shift=0", "augment.shift_px=0",
                                             f"train.compile={str(compiled).lower()}"])
        seed_everything(0)
        model = create_model(cfg.model, loss_cfg=cfg.loss)
        keys = list(model.state_dict())
        loop = Loop.create(cfg, model, ClipLoss(cfg.loss), torch.device("cpu"), 2)
        assert (model._compiled_visual is not None) == compiled
        gen = torch.Generator().manual_seed(2)
        batch = {"spikes": (torch.rand(4, 16, 32, 32, generator=gen) < 0.2).to(torch.uint8),
                 "caption": [f"a spike video of a {d}." for d in (1, 7, 1, 7)], "label": torch.tensor([0, 1, 0, 1])}
        out = []
        for step in range(2):
            out.append(loop.micro_step(batch, 1.0, sync=True, index=step)["loss"])
            loop.optimizer_step(out[-1], step + 1)
        losses[compiled] = out
        assert list(model.state_dict()) == keys
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_fractional_gpus_per_worker_reach_ray_and_pack_sweep_trials(monkeypatch):
    """``scale.gpus_per_worker=0.25``: each GPU worker asks Ray for a quarter GPU, and a sweep of one-worker trials
    runs four per GPU (CPUs permitting); without GPUs in use the key changes nothing."""
    import ray

    from spklip.runtime.plan import worker_resources
    from spklip.runtime.tune.sweep import max_concurrent_trials, trial_resources

    cfg = load_config(overrides=["scale.use_gpu=true", "scale.gpus_per_worker=0.25", "scale.cpus_per_worker=1"])
    assert worker_resources(cfg) == (True, {"CPU": 1.0, "GPU": 0.25})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert max_concurrent_trials(cfg) == 4  # the GPU's four quarters, not the 12 trials the CPUs hold
    whole = load_config(overrides=["scale.use_gpu=true", "scale.cpus_per_worker=1"])
    assert worker_resources(whole)[1]["GPU"] == 1.0 and max_concurrent_trials(whole) == 1
    cpu = load_config(overrides=["scale.use_gpu=false", "scale.gpus_per_worker=0.25", "scale.cpus_per_worker=1"])
    assert worker_resources(cpu) == (False, {"CPU": 1.0}) and max_concurrent_trials(cpu) == 12
    # local-mode trials (the sweeps' default) train in their own actor, which holds the worker's share itself
    local = load_config(overrides=["scale.num_workers=0", "scale.use_gpu=true", "scale.gpus_per_worker=0.25",
                                   "scale.cpus_per_worker=1"])
    assert trial_resources(local) == {"cpu": 1.25, "gpu": 0.25} and max_concurrent_trials(local) == 4
    assert trial_resources(cfg) == {"cpu": 0.25}  # with Ray Train workers, they hold their own
    assert trial_resources(load_config(overrides=["scale.num_workers=0", "scale.use_gpu=false"])) == {"cpu": 0.75}


@pytest.mark.parametrize("value, message", [
    ("0", "scale.gpus_per_worker must be > 0, got 0.0"),
    ("1.5", "scale.gpus_per_worker must be at most 1 or a whole number"),
])
def test_gpus_per_worker_that_ray_cannot_place_is_refused(value, message):
    from spklip.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(overrides=[f"scale.gpus_per_worker={value}"])
