"""Temporal encoder: without positional embeddings the clip embedding ignores sub-block order; with them it doesn't.

Checked end to end on a tiny model whose sub-blocks do not overlap (step = window), so permuting the sub-blocks
is a permutation of chunks of the input clip.
"""

import pytest
import torch
from torch import nn

from spklip.config import ConfigError
from spklip.config.model import TemporalCfg
from spklip.model import create_model
from spklip.model.temporal import TemporalEncoder

R, K = 2, 3
WINDOW = 2 * R + 1


def _model(pos_embed: bool, pool: str):
    torch.manual_seed(0)
    return create_model("spklip-tiny", num_planes=K * WINDOW, height=32, width=32,
                        hsfe={"num_subblocks": K, "radius": R, "step": WINDOW, "num_branches": 2, "stride": 1},
                        temporal={"pos_embed": pos_embed, "pool": pool, "layers": 2, "dropout": 0.0}).train()
    # train mode: BatchNorm uses batch statistics (symmetric in the B*K rows), so fresh BN running stats don't
    # flatten the features; all dropout is 0, so the forward is deterministic


def _permuted(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    chunks = x.view(x.shape[0], K, WINDOW, *x.shape[2:])  # [B, K*w, H, W] -> [B, K, w, H, W]
    return chunks[:, order].reshape(x.shape)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_order_blind_without_positions_and_order_aware_with_them(pool):
    x = (torch.rand(2, K * WINDOW, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    order = [2, 0, 1]
    with torch.no_grad():
        blind = _model(False, pool)
        torch.testing.assert_close(blind.encode_spikes(x), blind.encode_spikes(_permuted(x, order)),
                                   atol=1e-5, rtol=1e-5)
        aware = _model(True, pool)
        diff = (aware.encode_spikes(x) - aware.encode_spikes(_permuted(x, order))).abs().max()
    assert diff > 1e-3


def test_concat_pool_keeps_the_order_even_without_positions():
    """``pool=concat`` reads the K tokens side by side: the same sub-blocks in another order give another embedding
    even with no positional embedding (where mean and CLS pooling are provably order-blind, the test above), and it
    is one linear layer over the flattened tokens."""
    x = (torch.rand(2, K * WINDOW, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    with torch.no_grad():
        model = _model(False, "concat")
        diff = (model.encode_spikes(x) - model.encode_spikes(_permuted(x, [2, 0, 1]))).abs().max()
        enc = TemporalEncoder(TemporalCfg(layers=1, heads=2, dropout=0.0, pos_embed=False, pool="concat"), 8, K)
        tokens = torch.randn(4, K, 8)
        out = enc.norm(enc.transformer(enc.ln_pre(tokens)))  # [4, K, 8]
        expected = sum(out[:, i] @ enc.concat.weight[:, i * 8:(i + 1) * 8].T for i in range(K)) + enc.concat.bias
        torch.testing.assert_close(enc(tokens), expected)
    assert diff > 1e-3


@pytest.mark.parametrize("train", [False, True])
def test_authors_style_equals_torch_transformer_encoder(train):
    """``temporal.style=authors`` is the authors' ``nn.TransformerEncoder`` (post-LN, ReLU, no extra norm) + mean:
    with a reference encoder's weights copied in, same output (eval: PyTorch's fused fast path; train without
    dropout: its Python path) and the same gradient with respect to the tokens."""
    torch.manual_seed(0)
    dim, heads, layers, b, k = 32, 4, 3, 5, 7
    dropout = 0.0 if train else 0.1  # eval mode turns dropout off; training compares without it
    cfg = TemporalCfg(layers=layers, heads=heads, mlp_ratio=4.0, dropout=dropout, pos_embed=False, pool="mean",
                      style="authors")
    ours = TemporalEncoder(cfg, dim, k)
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                                           activation="relu", norm_first=False),
                                layers, enable_nested_tensor=False)
    for block, layer in zip(ours.transformer, ref.layers):
        nn.init.normal_(layer.norm1.weight, 1.0, 0.2)  # non-trivial LayerNorm affines, so a swapped norm shows
        nn.init.normal_(layer.norm2.bias, 0.0, 0.2)
        block.load_torch_layer(layer)
    ours.train(train), ref.train(train)
    tokens = torch.randn(b, k, dim, requires_grad=True)
    with torch.set_grad_enabled(train):
        got = ours(tokens)  # [B, K, D] -> [B, D]
        want = ref(tokens.transpose(0, 1)).mean(dim=0)  # [K, B, D] (batch_first=False, as the authors) -> [B, D]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.LayerNorm) for m in (ours.ln_pre, ours.norm))  # no extra norms
    if train:
        g_ours, = torch.autograd.grad(got.square().sum(), tokens)
        g_ref, = torch.autograd.grad(want.square().sum(), tokens)
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


def test_spklip_style_differs_from_the_authors_and_fsve_rejects_authors_style():
    torch.manual_seed(0)
    cfg = TemporalCfg(layers=1, heads=2, dropout=0.0, style="spklip")
    enc = TemporalEncoder(cfg, 16, 3)
    assert isinstance(enc.ln_pre, nn.LayerNorm) and isinstance(enc.norm, nn.LayerNorm)
    with pytest.raises(ConfigError, match="model.temporal.style=authors applies to the ANN temporal encoder"):
        create_model("spklip-tiny-full-snn", temporal={"style": "authors"})


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_authors_style_is_order_blind_without_positions(pool):
    torch.manual_seed(0)
    x = (torch.rand(2, K * WINDOW, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    model = create_model("spklip-tiny-authors", num_planes=K * WINDOW, height=32, width=32,
                         hsfe={"num_subblocks": K, "radius": R, "step": WINDOW, "num_branches": 2, "stride": 1},
                         backbone={"attn_dropout": 0.0},
                         temporal={"pos_embed": False, "pool": pool, "layers": 2, "dropout": 0.0}).train()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_spikes(x), model.encode_spikes(_permuted(x, [2, 0, 1])),
                                   atol=1e-5, rtol=1e-5)
