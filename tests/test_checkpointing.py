"""Activation checkpointing (``model.hsfe.checkpointing``, ``model.backbone.checkpointing``): the same loss,
gradients and BatchNorm statistics as without it; only where it applies; and, in the slow tier, one real training
step of spklip-paper on the CPU (batch 1, 250 planes at 240x320) with its peak memory, with and without it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spklip.config import ConfigError, load_config
from spklip.loss import ClipLoss
from spklip.model import create_model
from spklip.model.layers import checkpointed
from spklip.train.loop import seed_everything

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1"]
ON = ["model.hsfe.checkpointing=true", "model.backbone.checkpointing=true"]


def _step(overrides, spikes, texts):
    """Loss, gradients and buffers after one forward + backward of a fresh seeded model."""
    cfg = load_config(overrides=SMALL + list(overrides))
    seed_everything(0)
    model = create_model(cfg.model, loss_cfg=cfg.loss).train()
    torch.manual_seed(5)  # dropout draws
    out = model(spikes, texts)
    loss = ClipLoss(cfg.loss)(out["spike_features"], out["text_features"], out["logit_scale"])["contrastive_loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("extra", [[], ["model.hsfe.norm=bn", "model.temporal.dropout=0.2",
                                        "model.backbone.attn_dropout=0.2"]],
                         ids=["spklip-tiny", "bn-and-dropout"])
def test_checkpointing_gives_the_same_gradients_and_statistics(extra):
    gen = torch.Generator().manual_seed(0)
    spikes = (torch.rand(3, 16, 32, 32, generator=gen) < 0.2).to(torch.uint8)
    texts = ["a spike video of a 1.", "a spike video of a 7.", "a spike video of a 1."]
    loss, grads, buffers = _step(extra, spikes, texts)
    loss_ck, grads_ck, buffers_ck = _step(extra + ON, spikes, texts)
    assert loss_ck == pytest.approx(loss, abs=1e-6)
    assert grads_ck.keys() == grads.keys() and any("hsfe.trunk" in n for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(grads_ck[name], g, atol=1e-6, rtol=1e-5, msg=name)
    for name, b in buffers.items():  # BN running statistics moved once, not twice (the recomputation restores them)
        torch.testing.assert_close(buffers_ck[name], b, atol=0, rtol=0, msg=name)


def test_checkpointed_keeps_only_the_segment_boundaries():
    """Inside a checkpointed segment nothing is saved for the backward but its input (counted with saved-tensor
    hooks); without autograd it is a plain call."""
    seg = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU())
    x = torch.randn(4, 8, requires_grad=True)

    def saved(fn):
        count = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(1) or t, lambda t: t):
            fn().sum().backward()
        return len(count)

    assert saved(lambda: seg(x)) > saved(lambda: checkpointed(seg, x))
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(seg, x), seg(x))


def test_checkpointing_applies_to_the_ann_towers_only():
    with pytest.raises(ConfigError, match="model.hsfe.checkpointing applies to the ANN HSFE only"):
        load_config(overrides=["model_preset=spklip-tiny-full-snn", "model.hsfe.checkpointing=true"])
    with pytest.raises(ConfigError, match="model.backbone.checkpointing applies to the ANN ResNet only"):
        load_config(overrides=["model_preset=spklip-tiny-snn-backbone", "model.backbone.checkpointing=true"])
    load_config(overrides=["model_preset=spklip-tiny-snn-backbone", "model.hsfe.checkpointing=true"])  # ANN HSFE
    load_config(overrides=["model_preset=tfp-resnet-tiny", "model.backbone.checkpointing=true"])


PAPER_STEP = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from spklip.config import load_config
    from spklip.loss import ClipLoss
    from spklip.model import create_model
    from spklip.train.loop import Loop, seed_everything

    torch.set_num_threads(2)
    batch = int(sys.argv[1])
    cfg = load_config(None, ["model_preset=spklip-paper", "augment.time_shift=0", "augment.shift_px=0", *sys.argv[2:]])
    seed_everything(0)
    model = create_model(cfg.model, loss_cfg=cfg.loss).train()
    loop = Loop.create(cfg, model, ClipLoss(cfg.loss), torch.device("cpu"), 1)
    spikes = (torch.rand(batch, 250, 240, 320) < 0.1).to(torch.uint8)
    batch = {"spikes": spikes, "caption": ["a car moving left", "a car moving right"][:batch],
             "label": torch.arange(batch)}
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
    before, t0 = rss(), time.perf_counter()
    loss = loop.micro_step(batch, 1.0, sync=True)["loss"]
    loop.optimizer_step(loss, 1)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps({"loss": loss, "trainable_params_m": round(params / 1e6, 2), "seconds": round(time.perf_counter() - t0, 1), "rss_before_mib": round(before),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
""")


@pytest.mark.slow
def test_one_training_step_of_the_paper_preset_with_and_without_checkpointing():
    """One real optimiser step of spklip-paper on the CPU at batch 1 and 2, each in its own process (ru_maxrss is a
    process's peak). Prints the peak RSS and what the step added to the RSS before it (activations, gradients and
    AdamW's state); the batch-2 minus batch-1 difference is the memory of one more clip. At batch 1 the loss of one
    pair is 0 (a 1x1 softmax) but the backward still runs every layer; at batch 2 it is compared with and without
    checkpointing. docs/benchmarks.md records the figures."""
    runs = {}
    for batch in (1, 2):
        for name, sets in (("plain", []), ("checkpointing", ON)):
            out = subprocess.run([sys.executable, "-c", PAPER_STEP, str(batch), *sets], cwd=ROOT, capture_output=True,
                                 text=True, timeout=1800)
            assert out.returncode == 0, out.stderr[-3000:]
            run = runs[batch, name] = json.loads(out.stdout.strip().splitlines()[-1])
            run["step_mib"] = run["peak_rss_mib"] - run["rss_before_mib"]
            print(f"spklip-paper, batch {batch}, one training step on the CPU, {name}: {run}")
    for name in ("plain", "checkpointing"):
        print(f"{name}: one more clip adds {runs[2, name]['step_mib'] - runs[1, name]['step_mib']} MiB")
    assert runs[2, "checkpointing"]["loss"] == pytest.approx(runs[2, "plain"]["loss"], abs=1e-4)
    assert runs[2, "plain"]["loss"] > 0
    for batch in (1, 2):
        assert runs[batch, "checkpointing"]["step_mib"] < 0.7 * runs[batch, "plain"]["step_mib"]
