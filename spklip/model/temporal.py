"""Temporal encoder over the K sub-block tokens (the ANN visual tower, `spklip.model.ann_visual`, ends with it)."""

from __future__ import annotations

import torch
from torch import nn

from spklip.config.model import TemporalCfg
from spklip.model.layers import Attention, Transformer


class PostLNBlock(nn.Module):
    """The authors' temporal block, ``torch.nn.TransformerEncoderLayer``'s defaults (post-LN, ReLU) on ``[B, n, D]``:

    ``x = norm1(x + drop(attn(x)))``, then ``x = norm2(x + drop(linear2(drop(relu(linear1(x))))))``; attention
    probabilities get the same dropout (PyTorch's ``nn.MultiheadAttention(dropout=...)``). The attention is the
    shared explicit-matmul `Attention` (separate q/k/v projections, so the energy hooks see every product);
    `load_torch_layer` copies the weights of a ``TransformerEncoderLayer`` into it.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop, self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attn(x)))
        return self.norm2(x + self.drop2(self.linear2(self.drop(torch.relu(self.linear1(x))))))

    @torch.no_grad()
    def load_torch_layer(self, layer: nn.TransformerEncoderLayer) -> None:
        """Copy a ``nn.TransformerEncoderLayer``'s weights (packed in-projection split into q, k, v)."""
        for proj, w, b in zip((self.attn.q, self.attn.k, self.attn.v), layer.self_attn.in_proj_weight.chunk(3),
                              layer.self_attn.in_proj_bias.chunk(3)):  # [3D, D] -> 3 x [D, D]; [3D] -> 3 x [D]
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        pairs = ((self.attn.proj, layer.self_attn.out_proj), (self.linear1, layer.linear1),
                 (self.linear2, layer.linear2), (self.norm1, layer.norm1), (self.norm2, layer.norm2))
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)


class TemporalEncoder(nn.Module):
    """``[B, K, D] -> [B, D]``: transformer over the sub-block tokens, then mean, CLS or concatenation pooling.

    ``style="spklip"``: LayerNorm on the tokens, pre-LN GELU blocks, a final LayerNorm (CLIP's ViT).
    ``style="authors"``: the authors' ``nn.TransformerEncoder`` (post-LN ReLU `PostLNBlock`s, no other norm).
    With ``pos_embed=False`` there is no positional information, so (as in the authors' code) the output is
    invariant to the order of the K tokens. ``pool="concat"`` reads the K tokens side by side through one linear
    layer (``[B, K*D] -> [B, D]``), so which window saw what reaches the output linearly; with the mean it has to be
    carried by the blocks' nonlinearities (the mean of ``token + position`` is order-blind in its linear part).
    """

    def __init__(self, cfg: TemporalCfg, dim: int, num_tokens: int):
        super().__init__()
        scale = dim ** -0.5  # CLIP's init scale for class and positional embeddings
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * scale) if cfg.pool == "cls" else None
        n = num_tokens + (self.cls is not None)
        self.concat = nn.Linear(num_tokens * dim, dim) if cfg.pool == "concat" else None
        self.pos = nn.Parameter(torch.randn(1, n, dim) * scale) if cfg.pos_embed else None
        if cfg.style == "authors":
            self.ln_pre, self.norm = nn.Identity(), nn.Identity()
            self.transformer = nn.Sequential(*(PostLNBlock(dim, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                               for _ in range(cfg.layers)))
        else:
            self.ln_pre = nn.LayerNorm(dim)  # as CLIP's ViT: tokens (+ positions) are normalised before the blocks
            self.transformer = Transformer(dim, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout)
            self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # [B, 1+K, D]
        if self.pos is not None:
            tokens = tokens + self.pos
        out = self.norm(self.transformer(self.ln_pre(tokens)))  # [B, n, D]
        if self.concat is not None:
            return self.concat(out.flatten(1))  # [B, K, D] -> [B, K*D] -> [B, D]
        return out[:, 0] if self.cls is not None else out.mean(dim=1)
