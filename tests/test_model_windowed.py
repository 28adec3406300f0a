"""The order-aware, HSFE-free baseline ``tfp-windows`` (issue 24, item 2): the vectorised window reduction against a
per-window loop, shapes, order awareness, gradients, the energy count, ``spklip models`` and the baselines sweep."""

import pytest
import torch

from spklip.cli import main
from spklip.config import load_config
from spklip.model import create_model, list_models
from spklip.model.baselines import TfpWindows, window_rates
from spklip.model.energy import estimate_energy

PRESET = "tfp-windows-tiny"


def window_rates_reference(spikes: torch.Tensor, window: int, k: int, step: int, offset: int) -> torch.Tensor:
    """The slow reference: an explicit loop over samples and windows, one mean image each -> [B*K, 1, H, W]."""
    out = []
    for b in range(spikes.shape[0]):
        for i in range(k):
            start = offset + i * step
            out.append(spikes[b, start: start + window].mean(dim=0, keepdim=True))  # [1, H, W]
    return torch.stack(out)


def _spikes(b: int, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, h, w, generator=g) < 0.2).float()


@pytest.mark.parametrize("window, k, step, offset, n", [(11, 3, 10, 0, 32), (11, 1, 1, 10, 32), (5, 4, 3, 2, 20),
                                                          (7, 5, 7, 0, 35), (3, 2, 1, 0, 4)])
def test_vectorised_window_rates_equal_the_loop(window, k, step, offset, n):
    x = _spikes(3, n, 6, 5)
    torch.testing.assert_close(window_rates(x, window, k, step, offset),
                               window_rates_reference(x, window, k, step, offset), rtol=0, atol=1e-6)


def test_preset_layout_forward_backward_and_order():
    assert PRESET in list_models()
    torch.manual_seed(0)
    model = create_model(PRESET)
    tiny = create_model("spklip-tiny")
    assert isinstance(model.visual, TfpWindows)
    assert (model.visual.k, model.visual.step, model.visual.offset, model.visual.window) == \
        (*tiny.cfg.hsfe.layout(tiny.cfg.num_planes), tiny.cfg.hsfe.window)  # the same K windows as spklip-tiny
    assert model.cfg.temporal == tiny.cfg.temporal and model.cfg.backbone == tiny.cfg.backbone
    assert model.visual.temporal.pos is not None  # positions: the order of the windows is visible
    x = _spikes(2, 32, 64, 64)
    out = model.visual(x)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.visual.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    # the order: three windows that do not overlap (step 11 on 33 planes), the first and last swapped; batch
    # statistics (train mode, no dropout), since fresh running statistics flatten every window to ~one token
    model = create_model(PRESET, num_planes=33, hsfe__step=11).train()
    x = _spikes(2, 33, 64, 64)
    x[:, :11] *= _spikes(2, 11, 64, 64, seed=1)  # a sparse first window, a dense last one: distinct tokens
    swapped = torch.cat([x[:, 22:], x[:, 11:22], x[:, :11]], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model.visual(x), model.visual(swapped), atol=1e-3)  # it reads the order
    # with mean pooling and without positions the tower is blind to the window order (the preset pools by concat,
    # which keeps the order even without positions: tests/test_model_temporal.py)
    model = create_model(PRESET, num_planes=33, hsfe__step=11, temporal__pool="mean").train()
    with torch.no_grad():
        assert not torch.allclose(model.visual(x), model.visual(swapped), atol=1e-3)
        model.visual.temporal.pos = None
        torch.testing.assert_close(model.visual(x), model.visual(swapped), rtol=1e-4, atol=1e-5)


def test_energy_counts_the_backbone_k_times_and_the_temporal_encoder():
    torch.manual_seed(0)
    x = _spikes(2, 32, 64, 64).to(torch.uint8)
    windows = estimate_energy(create_model(PRESET), x, batch_stats=True)
    single = estimate_energy(create_model("tfp-resnet-tiny"), x, batch_stats=True)  # the same ResNet, once per clip
    backbone = sum(r.dense_macs for r in windows.rows if r.name.startswith("backbone."))
    assert backbone == pytest.approx(3 * sum(r.dense_macs for r in single.rows))  # K = 3 windows
    assert any(r.name.startswith("temporal.") and r.macs > 0 for r in windows.rows)
    assert windows.metrics()["energy_per_clip_mj"] > 3 * single.metrics()["energy_per_clip_mj"] * 0.99


def test_models_lists_it_and_the_sweep_has_the_variant_and_gap(capsys):
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {PRESET} "))
    assert "| tfp-windows |" in row and "K=3 r=5 s=10" in row
    from spklip.sweeps.baselines import SPEC, VARIANTS

    assert VARIANTS["windowed-average"] == {"model.arch": "tfp-windows"}
    assert ("variant", "hsfe", "windowed-average") in SPEC.gaps
    cfg = load_config(None, {"model_preset": "spklip-tiny", "model.arch": "tfp-windows"})  # base + the variant
    assert isinstance(create_model(cfg.model).visual, TfpWindows)
