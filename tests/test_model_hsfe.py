"""HSFE: sub-block layout, batched windows == explicit slices, batched extractor == slow per-sample loop."""

import dataclasses

import pytest
import torch

from spklip.config import ConfigError, HsfeCfg
from spklip.model.hsfe import HSFE, cut_subblocks
from spklip.model.reference import hsfe_reference


def L(k, r, s):  # noqa: E743 - a layout-only config (one branch fits any window)
    return HsfeCfg(num_subblocks=k, radius=r, step=s, num_branches=1)


def test_paper_layout_is_the_authors_placement():
    k, step, offset = L(5, 30, 45).layout(250)
    starts = [offset + i * step for i in range(k)]
    assert (k, starts) == (5, [0, 45, 90, 135, 180])  # planes 0-240 used, 241-249 not (as in the authors' code)


@pytest.mark.parametrize("cfg, n, want", [
    (L(5, 30, "auto"), 250, (5, 47, 0)),  # (250-61)//4 = 47, span 249: offset 0
    (L(3, 5, "auto"), 32, (3, 10, 0)),
    (L(4, 2, "auto"), 20, (4, 5, 0)),
    (L(3, 2, "auto"), 20, (3, 7, 0)),
    (L(3, 1, "auto"), 12, (3, 4, 0)),
    (L(3, 1, "auto"), 13, (3, 5, 0)),
    (L(4, 1, "auto"), 14, (4, 3, 1)),  # span 3*3+3 = 12 of 14: centred, offset 1
    (L(1, 2, "auto"), 11, (1, 1, 3)),  # one centred window
    (L("auto", 30, 45), 250, (5, 45, 0)),
    (L("auto", 2, 3), 20, (6, 3, 0)),
])
def test_auto_layouts(cfg, n, want):
    k, step, offset = cfg.layout(n)
    assert (k, step, offset) == want
    assert offset + (k - 1) * step + cfg.window <= n  # every window fits


@pytest.mark.parametrize("cfg, n, match", [
    (L(5, 30, 45), 200, "need 241 planes"),
    (L(5, 30, 45), 40, "longer than"),
    (L("auto", 3, "auto"), 40, "both be 'auto'"),
    (L(9, 3, "auto"), 10, "need at least 15 planes"),
])
def test_bad_layouts_are_clear_errors(cfg, n, match):
    with pytest.raises(ConfigError, match=match):
        cfg.layout(n)


def test_cut_subblocks_equals_explicit_slices():
    x = torch.randint(0, 2, (2, 20, 3, 4), dtype=torch.uint8)
    out = cut_subblocks(x, window=5, k=4, step=4, offset=1)
    assert out.shape == (8, 5, 3, 4)
    for b in range(2):
        for i in range(4):
            assert torch.equal(out[b * 4 + i], x[b, 1 + 4 * i: 1 + 4 * i + 5])


SMALL = HsfeCfg(num_subblocks=3, radius=4, step="auto", num_branches=3, channel_step=1, branch_hidden=4,
                features=6, num_res_blocks=1)


@pytest.mark.parametrize("changes", [
    {}, {"spatial_attention": False}, {"photon_conservation": True}, {"stride": 2}, {"channel_step": 2},
    {"num_branches": 1}, {"num_subblocks": "auto", "step": 4}, {"norm": "bn"}, {"norm": "bn", "stride": 2},
])
def test_batched_hsfe_equals_the_per_sample_per_subblock_loop(changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, **changes)
    hsfe = HSFE(cfg).eval()
    if cfg.photon_conservation:
        torch.nn.init.normal_(hsfe.branch1.theta)  # a non-uniform temporal mask
    for bn in (m for m in hsfe.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics far from 0/1
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
    spikes = (torch.rand(3, 20, 9, 11) < 0.3).float()
    k, step, offset = cfg.layout(20)
    batched = hsfe(cut_subblocks(spikes, cfg.window, k, step, offset))
    reference = hsfe_reference(hsfe, spikes, 20)
    assert batched.shape == (3 * k, cfg.features, -(-9 // cfg.stride), -(-11 // cfg.stride))
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-5)


def test_photon_conservation_mask_redistributes_but_conserves_counts():
    torch.manual_seed(0)
    conv = HSFE(dataclasses.replace(SMALL, photon_conservation=True)).branch1
    assert torch.equal(conv.temporal_mask(), conv.crop)  # starts as the raw crop (all ones)
    torch.nn.init.normal_(conv.theta, std=2.0)
    mask = conv.temporal_mask()
    assert (mask >= 0).all() and (mask[conv.crop == 0] == 0).all()
    torch.testing.assert_close(mask.sum(1), conv.crop.sum(1))  # sum_t a_m[t] = L_m
    plane = (torch.rand(5, 5) < 0.5).float()  # a static scene: every plane the same
    window = plane.expand(SMALL.window, 5, 5)
    for m in range(SMALL.num_branches):  # masked total spike count == raw count over the branch's crop
        torch.testing.assert_close((mask[m, :, None, None] * window).sum(), (conv.crop[m, :, None, None] * window).sum())
    mask.sum().backward()
    assert conv.theta.grad is not None


def test_branch_masking_blocks_planes_outside_each_crop():
    torch.manual_seed(0)
    hsfe = HSFE(dataclasses.replace(SMALL, channel_step=2))
    x = torch.zeros(1, SMALL.window, 6, 6, requires_grad=True)
    out = hsfe.branch1(x)  # [1, M*hidden, 6, 6]
    last = out[:, -SMALL.branch_hidden:].sum()  # branch M-1 sees only the centre plane
    last.backward()
    touched = x.grad.abs().sum(dim=(0, 2, 3)) > 0
    assert touched.tolist() == [i == 4 for i in range(SMALL.window)]


def test_normalised_trunk_blocks_start_as_the_identity_and_features_are_unit_scale():
    torch.manual_seed(0)
    hsfe = HSFE(dataclasses.replace(SMALL, norm="bn", num_res_blocks=2)).train()
    x = torch.rand(2, 6, 8, 8)
    for block in hsfe.trunk:  # zero-initialised last BN gain: body(x) == 0, block(x) == relu(x)
        torch.testing.assert_close(block(x), torch.relu(x))
    spikes = (torch.rand(8, SMALL.window, 12, 12) < 0.04).float()  # sparse, like a real camera
    out = hsfe(spikes)
    plain = HSFE(SMALL).train()(spikes)
    # with BN the clip-dependent part is of unit order; without it the between-clip spread is a small fraction
    spread = lambda t: (t.var(dim=0).mean() / t.pow(2).mean()).item()
    assert spread(out) > 0.2 > spread(plain)
