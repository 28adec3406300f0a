"""Temporal encoder: without positional embeddings the clip embedding ignores sub-block order; with them it doesn't.

Checked end to end on a tiny model whose sub-blocks do not overlap (step = window), so permuting the sub-blocks
is a permutation of chunks of the input clip.
"""

import pytest
import torch

from spklip.model import create_model

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
