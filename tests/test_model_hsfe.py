"""HSFE: sub-block layout, batched windows == explicit slices, batched extractor == slow per-sample loop,
cache-sized chunks == one batch == the per-sub-block loop (outputs and gradients)."""

import copy
import dataclasses

import pytest
import torch

from spklip.config import ConfigError, HsfeCfg, load_config
from spklip.model.fused import fusable
from spklip.model.hsfe import FALLBACK_CACHE_MB, HSFE, chunk_size, cpu_cache_mb, cut_subblocks
from hsfe_reference import hsfe_reference, hsfe_subblock_loop


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


def _randomise_bn(hsfe):
    for bn in (m for m in hsfe.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics far from 0/1
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()


def _with_budget(hsfe, budget):
    """`hsfe` built again with chunk budget `budget`: the same weights, BN statistics, dtype and mode."""
    other = HSFE(hsfe.cfg, chunk_budget=budget).to(next(hsfe.parameters()).dtype).train(hsfe.training)
    other.load_state_dict(hsfe.state_dict())
    return other


def _run(hsfe, blocks, budget):
    """Output and the gradients of a fixed random loss w.r.t. the input and every parameter, at `budget`."""
    hsfe = _with_budget(hsfe, budget)
    x = blocks.clone().requires_grad_(True)
    out = hsfe(x)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss that weighs every output differently
    (out * weights).sum().backward()
    return out.detach(), [x.grad] + [p.grad.clone() for p in hsfe.parameters() if p.grad is not None]


@pytest.mark.parametrize("changes, batch, planes, hw", [
    ({}, 3, 20, (9, 11)),
    ({"stride": 2}, 2, 20, (10, 7)),
    ({"num_subblocks": "auto", "step": 4}, 2, 20, (8, 8)),  # K = 4
    ({"num_subblocks": 1}, 4, 12, (6, 9)),
    ({"photon_conservation": True, "spatial_attention": False}, 2, 16, (7, 7)),
    ({"norm": "bn"}, 2, 20, (9, 11)),
])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_chunked_hsfe_equals_one_batch_and_the_subblock_loop(changes, batch, planes, hw, mode):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, **changes)
    hsfe = HSFE(cfg).train(mode == "train")
    if cfg.photon_conservation:
        torch.nn.init.normal_(hsfe.branch1.theta)
    _randomise_bn(hsfe)
    k, step, offset = cfg.layout(planes)
    spikes = (torch.rand(batch, planes, *hw) < 0.3).float()
    blocks = cut_subblocks(spikes, cfg.window, k, step, offset)
    n, per_block = blocks.shape[0], hsfe.block_bytes(blocks)
    want, _ = _run(hsfe, blocks, 0)  # one batch
    # gradients in float64: a parameter's gradient sums over every sub-block and pixel, and chunks change the order
    # of that sum (float32 rounding ~1e-7 relative on sums of thousands of terms); the maths must agree exactly
    hsfe64, blocks64 = copy.deepcopy(hsfe).double(), blocks.double()
    _, want_grads = _run(hsfe64, blocks64, 0)
    if mode == "eval" or cfg.norm == "none":  # a training BatchNorm sees the whole batch: no per-sub-block loop
        with torch.no_grad():
            torch.testing.assert_close(hsfe_subblock_loop(hsfe, blocks), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hsfe_reference(hsfe, spikes, planes), want, atol=1e-5, rtol=1e-5)
    for per_call in sorted({1, 2, 3, n - 1}):
        if not 1 <= per_call < n:
            continue
        budget = per_call * per_block + per_block // 2  # fits per_call sub-blocks, not per_call + 1
        assert chunk_size(n, per_block, budget) == per_call
        chunked = mode == "eval" or cfg.norm == "none"  # a training BatchNorm keeps one batch
        assert _with_budget(hsfe, budget).subblocks_per_call(blocks) == (per_call if chunked else n)
        out, _ = _run(hsfe, blocks, budget)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        _, grads = _run(hsfe64, blocks64, budget * 2)  # same per_call: float64 doubles block_bytes
        assert len(grads) == len(want_grads)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_a_training_batchnorm_and_a_gpu_keep_one_batch_the_cpu_chunks_by_its_cache():
    bn = dataclasses.replace(SMALL, norm="bn")
    blocks = torch.zeros(6, SMALL.window, 8, 8)
    hsfe = HSFE(bn, chunk_budget=HSFE(bn).block_bytes(blocks))  # room for one sub-block
    assert hsfe.train().subblocks_per_call(blocks) == 6
    assert hsfe.eval().subblocks_per_call(blocks) == 1
    assert HSFE(bn, chunk_budget=0).eval().subblocks_per_call(blocks) == 6
    paper = HSFE(HsfeCfg()).eval()  # the paper's extractor: 64 maps of 240x320 per sub-block
    big = torch.empty(1, 61, 240, 320).expand(10, -1, -1, -1)  # B*K = 10 sub-blocks, one sub-block of memory
    assert paper.block_bytes(big) == 64 * 240 * 320 * 4
    assert paper.chunk_budget == "auto"
    assert paper.subblocks_per_call(big) == chunk_size(10, 64 * 240 * 320 * 4, cpu_cache_mb() * 2 ** 20)
    assert paper.subblocks_per_call(big.to("meta")) == 10  # "auto" off the CPU: one batch
    assert HSFE(HsfeCfg(chunk_mb=40)).subblocks_per_call(big.to("meta")) == 2  # a number applies everywhere
    assert HSFE(HsfeCfg(chunk_mb=0)).subblocks_per_call(big) == 10


def _cache(root, name, level, kind, size, cpus):
    d = root / name
    d.mkdir()
    for key, value in {"level": level, "type": kind, "size": size, "shared_cpu_list": cpus}.items():
        (d / key).write_text(f"{value}\n")


def test_cpu_cache_is_the_last_level_capped_per_sharing_cpu(tmp_path):
    _cache(tmp_path, "index0", 1, "Data", "48K", "0")
    _cache(tmp_path, "index1", 1, "Instruction", "64K", "0")
    _cache(tmp_path, "index2", 2, "Unified", "2048K", "0")
    _cache(tmp_path, "index3", 3, "Unified", "32768K", "0-7")
    assert cpu_cache_mb(tmp_path) == 32.0
    vm = tmp_path / "vm"
    vm.mkdir()
    _cache(vm, "index2", 2, "Unified", "2048K", "0")
    _cache(vm, "index3", 3, "Unified", "491520K", "0-1")  # a VM reporting its host's L3 to 2 vCPUs
    assert cpu_cache_mb(vm) == 32.0  # 16 MiB per sharing CPU
    l2 = tmp_path / "l2"
    l2.mkdir()
    _cache(l2, "index0", 2, "Unified", "4M", "0,1")
    assert cpu_cache_mb(l2) == 4.0
    assert cpu_cache_mb(tmp_path / "missing") == FALLBACK_CACHE_MB


def test_chunk_mb_is_auto_or_a_non_negative_int():
    assert HsfeCfg().chunk_mb == "auto"
    assert load_config(overrides=["model.hsfe.chunk_mb=8"]).model.hsfe.chunk_mb == 8
    assert HSFE(HsfeCfg(chunk_mb=8)).chunk_budget == 8 * 2 ** 20
    for bad in (-1, "big", 1.5, True):
        with pytest.raises(ConfigError, match="chunk_mb"):
            HsfeCfg(chunk_mb=bad)
    with pytest.raises(ConfigError, match="chunk_mb"):
        load_config(overrides=["model.hsfe.chunk_mb=-2"])


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_maps_equal_contiguous_ones(train):
    """memory_format changes only the layout the convs run in: outputs and gradients equal the NCHW ones."""
    cfg = load_config(None, {"model_preset": "spklip-tiny"}).model.hsfe
    torch.manual_seed(0)
    ref = HSFE(dataclasses.replace(cfg, memory_format="contiguous")).double().train(train)
    auto = HSFE(cfg).double().train(train)
    x = (torch.rand(6, cfg.window, 32, 32) < 0.3).double()
    assert not auto.channels_last(x) and not ref.channels_last(x)  # "auto" trains NCHW
    with torch.no_grad():
        assert auto.channels_last(x)  # and evaluates in channels_last on a CPU
    auto = HSFE(dataclasses.replace(cfg, memory_format="channels_last")).double().train(train)
    auto.load_state_dict(ref.state_dict())
    out_ref, out = ref(x), auto(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, out_ref, atol=1e-10, rtol=0)
    if train:
        out.square().sum().backward()
        out_ref.square().sum().backward()
        for (name, p), q in zip(auto.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9, msg=name)


@pytest.mark.parametrize("changes", [{}, {"stride": 2}, {"spatial_attention": False}, {"num_res_blocks": 0},
                                     {"photon_conservation": True, "channel_step": 2}])
def test_fused_inference_equals_the_eager_layers_and_is_what_a_cpu_evaluation_runs(changes):
    """On CPU without autograd the HSFE runs each conv with its ReLU / residual add fused (spklip.model.fused): the
    output equals the eager layers', and the eager `extract` is not called at all."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, **changes)
    hsfe = HSFE(cfg).eval()
    if cfg.photon_conservation:
        torch.nn.init.normal_(hsfe.branch1.theta)
    blocks = cut_subblocks((torch.rand(2, 20, 9, 11) < 0.3).float(), cfg.window, *cfg.layout(20))
    with torch.no_grad():
        want = hsfe_subblock_loop(hsfe, blocks)  # eager, NCHW, one sub-block per call
        for budget in (0, hsfe.block_bytes(blocks) * 2):  # one batch, and chunks of two sub-blocks
            chunked = _with_budget(hsfe, budget)
            chunked.extract = None  # a call of the eager path would fail
            out = chunked(blocks)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(hsfe.extract_fused(blocks.contiguous(memory_format=torch.channels_last)), want,
                                   atol=1e-6, rtol=1e-6)


def test_fusion_runs_only_where_it_applies():
    hsfe = HSFE(SMALL).eval()
    x = torch.zeros(3, SMALL.window, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert fusable(hsfe, x)
        assert not fusable(hsfe, x.contiguous())  # NCHW maps: the eager layers
        assert not fusable(hsfe, x.double())
        assert not fusable(HSFE(dataclasses.replace(SMALL, fusion="none")), x)
        assert not fusable(HSFE(dataclasses.replace(SMALL, norm="bn")).eval(), x)  # BN not folded: eager
        assert not fusable(hsfe, x.to("meta"))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the eager convs run in bf16 there
            assert not fusable(hsfe, x)
        handle = hsfe.trunk[0].body[0].register_forward_hook(lambda *a: None)  # e.g. the energy accounting's
        assert not fusable(hsfe, x)
        handle.remove()
        assert fusable(hsfe, x)
    assert not fusable(hsfe, x)  # autograd: no post-op here has a backward
    assert load_config(overrides=["model.hsfe.fusion=none"]).model.hsfe.fusion == "none"
    with pytest.raises(ConfigError, match="fusion"):
        load_config(overrides=["model.hsfe.fusion=always"])
    # autograd on: forward takes the eager path (the fused ops have no backward), gradients reach the input
    blocks = (torch.rand(3, SMALL.window, 8, 8) < 0.3).float().contiguous(memory_format=torch.channels_last)
    blocks.requires_grad_(True)
    HSFE(dataclasses.replace(SMALL, memory_format="channels_last"))(blocks).square().sum().backward()
    assert blocks.grad is not None and blocks.grad.abs().sum() > 0
