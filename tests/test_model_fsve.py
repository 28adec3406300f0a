"""FSVE settings that sweeps explore all build, run forward/backward, and change the encoder as they should."""

import dataclasses

import pytest
import torch
from spikingjelly.activation_based import neuron

from spklip.model.fsve import SeqNorm, SpikingVisualEncoder
from spklip.model.factory import resolve_cfg


def _cfg(variant: str, **fsve):
    return resolve_cfg("spklip-tiny-full-snn", height=32, width=32, backbone={"layers": [1, 1, 1]},
                       fsve={"variant": variant, **fsve})


@pytest.mark.parametrize("variant, fsve", [
    ("full-snn", {"time_steps": 3, "neuron": "plif", "reset": "soft", "surrogate": "sigmoid", "norm": "bn"}),
    ("full-snn", {"surrogate": "rect", "norm": "none", "tau": 1.5, "v_threshold": 0.3}),
    ("snn-backbone", {"time_steps": 1, "norm": "bn", "reset": "soft"}),
])
def test_fsve_settings_forward_backward(variant, fsve):
    torch.manual_seed(0)
    cfg = _cfg(variant, **fsve)
    enc = SpikingVisualEncoder(cfg)
    lifs = [m for m in enc.modules() if isinstance(m, neuron.LIFNode | neuron.ParametricLIFNode)]
    assert lifs and all(float(m.v_threshold) == cfg.fsve.v_threshold for m in lifs)
    assert all((m.v_reset is None) == (cfg.fsve.reset == "soft") for m in lifs)
    assert isinstance(lifs[0], neuron.ParametricLIFNode) == (cfg.fsve.neuron == "plif")
    spikes = (torch.rand(2, cfg.num_planes, 32, 32) < 0.2).float()
    out = enc(spikes)
    assert out.shape == (2, cfg.embed_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_full_snn_hsfe_emits_binary_spikes():
    torch.manual_seed(0)
    enc = SpikingVisualEncoder(_cfg("full-snn")).train()
    seen = {}
    enc.hsfe.register_forward_hook(lambda m, i, o: seen.setdefault("maps", o))
    enc((torch.rand(2, 32, 32, 32) < 0.2).float())
    maps = seen["maps"]
    assert maps.shape[0] == 2  # [T, B*K, F, H', W']
    assert ((maps == 0) | (maps == 1)).all() and 0 < maps.mean() < 1


@pytest.mark.parametrize("mode", ["tdbn", "bn", "none"])
def test_seqnorm_statistics(mode):
    cfg = _cfg("full-snn", time_steps=3, norm=mode).fsve
    norm = SeqNorm(4, cfg, spatial=False).train()
    x = torch.randn(3, 64, 4) * torch.tensor([1.0, 5.0, 20.0])[:, None, None] + 3  # each step its own scale
    y = norm(x)
    if mode == "none":
        assert torch.equal(x, y)
    elif mode == "bn":  # per time step: every step normalised on its own
        torch.testing.assert_close(y.mean(dim=1), torch.zeros(3, 4), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.std(dim=1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    else:  # shared over time, scaled to the threshold: steps keep their relative scale
        torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(4), atol=1e-5, rtol=0)
        assert y[2].std() > 5 * y[0].std()
        torch.testing.assert_close(norm.bn.weight, torch.full((4,), cfg.v_threshold * cfg.tau))  # LIF divides by tau
        paper = SeqNorm(4, dataclasses.replace(cfg, tdbn_gain="threshold"), spatial=False)
        torch.testing.assert_close(paper.bn.weight, torch.full((4,), cfg.v_threshold))


def test_every_spiking_layer_fires_at_initialisation():
    """The tdBN gain and the attention-output norm keep each neuron layer near a healthy rate on sparse input; with
    the paper's gain and no attention norm most layers fire ~3 % and spiking attention's output never fires."""
    def rates(**fsve):
        torch.manual_seed(0)
        cfg = _cfg("full-snn", **fsve)
        enc = SpikingVisualEncoder(cfg).train()
        seen = []
        for mod in enc.modules():
            if isinstance(mod, neuron.BaseNode):
                mod.register_forward_hook(lambda m, i, o: seen.append(float(o.float().mean())))
        enc((torch.rand(4, cfg.num_planes, cfg.height, cfg.width) < 0.05).float())
        return seen

    now, before = rates(), rates(tdbn_gain="threshold", attn_norm=False)
    assert min(now) > 0.05 and sum(now) / len(now) > 0.1
    assert min(before) < 0.005 and sum(before) / len(before) < 0.06


class _HandWrittenTdbn(torch.nn.Module):
    """Reference: spklip's tdBN before it used spikingjelly's ThresholdDependentBatchNorm (kept here only)."""

    def __init__(self, channels: int, cfg, spatial: bool):
        super().__init__()
        self.bn = (torch.nn.BatchNorm2d if spatial else torch.nn.BatchNorm1d)(channels)
        torch.nn.init.constant_(self.bn.weight, cfg.v_threshold * (cfg.tau if cfg.tdbn_gain == "threshold-tau" else 1.0))

    def forward(self, x):
        return self.bn(x.flatten(0, 1)).view(x.shape)  # [T, N, C, *S] -> [T*N, C, *S] -> back


@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("fsve", [{}, {"tdbn_gain": "threshold"}, {"tau": 4 / 3, "v_threshold": 0.5},
                                  {"tau": 1.5, "v_threshold": 0.3, "tdbn_gain": "threshold"}])
def test_tdbn_is_the_hand_written_one(spatial, fsve):
    """Same init (gain, bias, buffers, state_dict keys), same outputs and gradients in train mode, same running
    statistics after training steps, same outputs in eval mode: bit for bit."""
    cfg = _cfg("full-snn", time_steps=3, norm="tdbn", **fsve).fsve
    new, old = SeqNorm(6, cfg, spatial=spatial), _HandWrittenTdbn(6, cfg, spatial=spatial)
    assert new.state_dict().keys() == old.state_dict().keys()
    for key, value in old.state_dict().items():
        assert torch.equal(new.state_dict()[key], value), key
    torch.manual_seed(0)
    shape = (3, 5, 6, 4, 4) if spatial else (3, 5, 6)
    for _ in range(3):  # train mode: batch statistics, running averages move
        x = (torch.randn(shape) * 3 + 1).requires_grad_()
        y_new, y_old = new.train()(x), old.train()(x)
        assert torch.equal(y_new, y_old)
        g = torch.randn(shape)
        grads_new = torch.autograd.grad(y_new, (x, new.bn.weight, new.bn.bias), g)  # input, gain, bias
        grads_old = torch.autograd.grad(y_old, (x, old.bn.weight, old.bn.bias), g)
        assert all(torch.equal(a, b) for a, b in zip(grads_new, grads_old))
    for key, value in old.state_dict().items():
        assert torch.equal(new.state_dict()[key], value), key
    x = torch.randn(shape)
    assert torch.equal(new.eval()(x), old.eval()(x))


def _conv_inputs(enc, spikes, under: str) -> dict[str, torch.Tensor]:
    """The input of every Conv2d below module path `under` (first call)."""
    seen = {}
    for name, mod in enc.named_modules():
        if name.startswith(under) and isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda m, i, o, n=name: None if n in seen else seen.update({n: i[0].detach()}))
    enc(spikes)
    return seen


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


@pytest.mark.parametrize("residual", ["current", "sew", "membrane"])
def test_residual_forms(residual):
    """current: block outputs are spikes; sew: spike counts; membrane: a real-valued stream, yet every conv of the
    blocks (HSFE trunk and ResNet stages) is fed by spikes. All train (finite gradients down to the first conv) and
    the spiking HSFE still emits spikes."""
    torch.manual_seed(0)
    cfg = _cfg("full-snn", residual=residual)
    enc = SpikingVisualEncoder(cfg).train()
    spikes = (torch.rand(2, cfg.num_planes, 32, 32) < 0.2).float()
    outs = {}
    for name in ("hsfe", "hsfe.trunk.0", "backbone.stages.0"):
        enc.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: outs.update({n: o.detach()}))
    enc(spikes).square().sum().backward()
    assert _is_binary(outs["hsfe"]) and 0 < outs["hsfe"].mean() < 1
    for name in ("hsfe.trunk.0", "backbone.stages.0"):
        out = outs[name]
        if residual == "current":
            assert _is_binary(out)
        elif residual == "sew":
            assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() >= 2  # spike counts
        else:
            assert not _is_binary(out)
    convs = _conv_inputs(enc, spikes, "backbone.stages") | _conv_inputs(enc, spikes, "hsfe.trunk")
    assert convs and all(_is_binary(x) for x in convs.values()) == (residual != "sew")
    first = enc.hsfe.branch1.conv[0].weight.grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0


def test_default_residual_keeps_state_dict_keys():
    """The "current" form builds the same modules as before the option existed (saved FSVE models still load)."""
    keys = set(SpikingVisualEncoder(_cfg("full-snn")).state_dict())
    assert {"backbone.stages.0.body.3.conv.0.weight", "backbone.stages.1.short.1.conv.0.weight",
            "hsfe.trunk.0.body.2.conv.0.weight"} <= keys
    assert not any(k.startswith("hsfe.out_lif") for k in keys)


def test_readout_current_drops_only_the_last_output_neuron():
    torch.manual_seed(0)
    spikes = (torch.rand(2, 32, 32, 32) < 0.2).float()
    outs = {}
    enc = SpikingVisualEncoder(_cfg("full-snn", readout="current")).train()
    for i in (1, 2):
        enc.backbone.stages[-i].register_forward_hook(lambda m, inp, o, i=i: outs.update({i: o.detach()}))
    enc(spikes)
    assert _is_binary(outs[2]) and not _is_binary(outs[1])  # the one before the last still fires
    assert isinstance(enc.backbone.stages[-1].lif, torch.nn.Identity)


def test_neuron_options_reach_every_neuron():
    cfg = _cfg("full-snn", surrogate="atan", surrogate_alpha=5.0, detach_reset=False, decay_input=False)
    lifs = [m for m in SpikingVisualEncoder(cfg).modules() if isinstance(m, neuron.BaseNode)]
    assert lifs and all(m.surrogate_function.alpha == 5.0 and not m.detach_reset and not m.decay_input for m in lifs)


def test_loss_per_step_hands_the_loss_one_embedding_per_time_step():
    """TET: a training forward gives [T, B, D] whose mean over T is the usual output, evaluation gives [B, D]; the
    loop's loss is the mean of the contrastive loss at each step (a hand-computed reference), and it trains."""
    from spklip.config import load_config
    from spklip.loss import ClipLoss
    from spklip.model.spklip import Spklip
    from spklip.train.loop import Loop

    torch.manual_seed(0)
    cfg = _cfg("full-snn", time_steps=3, loss_per_step=True)
    enc = SpikingVisualEncoder(cfg).train()
    spikes = (torch.rand(4, cfg.num_planes, 32, 32) < 0.2).float()
    steps = enc(spikes)
    assert steps.shape == (3, 4, cfg.embed_dim)
    enc.per_step = False
    torch.testing.assert_close(enc(spikes), steps.mean(dim=0))  # same batch statistics, fresh membranes
    enc.per_step = True
    assert enc.eval()(spikes).shape == (4, cfg.embed_dim)

    model = Spklip(cfg).train()
    loop = Loop.__new__(Loop)  # only the loss of the loop: no data, optimiser or device needed
    loop.loss_fn = ClipLoss(load_config(None, {}).loss)
    captions = ["a one moving left", "a seven moving up", "a one moving left", "a two moving right"]
    keys = torch.tensor([0, 1, 0, 2])
    out = model(spikes, captions)
    assert out["spike_features"].shape == (3, 4, cfg.embed_dim)
    terms = loop.loss(out, keys)
    by_hand = sum(loop.loss_fn(out["spike_features"][t], out["text_features"], out["logit_scale"], keys=keys)
                  ["contrastive_loss"] for t in range(3)) / 3
    torch.testing.assert_close(terms["contrastive_loss"], by_hand)
    assert not torch.allclose(terms["contrastive_loss"], loop.loss_fn(
        torch.nn.functional.normalize(out["spike_features"].mean(0), dim=-1), out["text_features"],
        out["logit_scale"], keys=keys)["contrastive_loss"])  # not the loss of the mean embedding
    terms["contrastive_loss"].backward()
    first_conv = next(model.visual.hsfe.branch1.conv.parameters())  # the spiking HSFE's branch conv
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
