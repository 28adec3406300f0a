"""The 3D-convolution video baseline ``conv3d`` (issue 24, item 2): shapes and gradients, that it reads temporal
order, its size beside spklip-tiny, the energy count of its Conv3d layers, ``spklip models`` and the baselines
sweep. (What it reaches on real data is a study's figure: ``sweeps/baselines.py --first _variant=hsfe,conv3d``.)"""

import pytest
import torch

from spklip.cli import main
from spklip.config import load_config
from spklip.model import create_model, list_models
from spklip.model.baselines import Conv3dVideo
from spklip.model.energy import estimate_energy

PRESET = "conv3d-tiny"


def _spikes(b: int, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, h, w, generator=g) < 0.2).float()


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_preset_forward_backward_and_size():
    assert PRESET in list_models()
    torch.manual_seed(0)
    model = create_model(PRESET)
    assert isinstance(model.visual, Conv3dVideo)
    convs = [m for m in model.visual.modules() if isinstance(m, torch.nn.Conv3d)]
    assert len(convs) == 1 + sum(model.cfg.backbone.layers)  # the stem, then one per block
    x = _spikes(2, 32, 64, 64)
    out = model.visual(x)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.visual.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    tiny = _params(create_model("spklip-tiny").visual)
    assert 0.8 * tiny < _params(model.visual) < 1.05 * tiny  # a like-for-like size


def test_it_reads_temporal_order_and_takes_any_clip_length():
    torch.manual_seed(0)
    model = create_model(PRESET).train()  # batch statistics: fresh running statistics flatten everything
    x = _spikes(2, 32, 64, 64)
    x[:, :16] *= _spikes(2, 16, 64, 64, seed=1)  # a sparse first half, a dense second one
    with torch.no_grad():
        assert not torch.allclose(model.visual(x), model.visual(x.flip(1)), atol=1e-3)
    long = create_model(PRESET, num_planes=100, height=48, width=40).visual
    assert long(_spikes(1, 100, 48, 40)).shape == (1, 64)


def test_energy_counts_every_conv3d_and_the_first_on_binary_planes_as_accumulates():
    torch.manual_seed(0)
    x = _spikes(2, 32, 64, 64).to(torch.uint8)
    rep = estimate_energy(create_model(PRESET), x, batch_stats=True)
    convs = [r for r in rep.rows if r.kind == "conv"]
    assert len(convs) == 5 and all(r.dense_macs > 0 for r in convs)
    stem = next(r for r in convs if r.name.startswith("features.0"))
    assert stem.spiking_input and stem.macs == 0 and stem.sops == pytest.approx(stem.dense_macs * 0.2, rel=0.05)
    # the stem: 32 x 32 x 32 output positions x 32 channels x 27 taps, per clip (x 2 clips)
    assert stem.dense_macs == 2 * 32 * 32 * 32 * 32 * 27
    assert rep.metrics()["energy_per_clip_mj"] > 0


def test_models_lists_it_and_the_sweep_has_the_variant_and_gap(capsys):
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {PRESET} "))
    assert "| conv3d |" in row
    from spklip.sweeps.baselines import SPEC, VARIANTS

    assert VARIANTS["conv3d"] == {"model.arch": "conv3d", "model.backbone.width": 32}
    assert ("variant", "hsfe", "conv3d") in SPEC.gaps
    cfg = load_config(None, {"model_preset": "spklip-tiny", "model.arch": "conv3d", "model.backbone.width": 32})
    model = create_model(cfg.model)
    assert isinstance(model.visual, Conv3dVideo) and _params(model.visual) == _params(create_model(PRESET).visual)
