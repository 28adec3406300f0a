"""Shared layers: an explicit-matmul multi-head attention and a pre-LN transformer.

Attention products run through `MatMul` modules (not a fused kernel) so that the energy accounting's forward hooks
see every multiply-accumulate, including the two attention products. Sequences are short here (K sub-block tokens,
77 text tokens, h*w+1 pooled positions), so the fused kernel would save little.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """The running statistics of `module`'s training BatchNorms put back as they were after the block."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
           and m.track_running_stats]
    saved = [(b, b.clone()) for m in bns for b in (m.running_mean, m.running_var, m.num_batches_tracked)
             if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def checkpointed(fn: Callable[..., torch.Tensor], *args: torch.Tensor, owner: nn.Module | None = None
                 ) -> torch.Tensor:
    """``fn(*args)`` under activation checkpointing (``torch.utils.checkpoint``, ``use_reentrant=False``) while
    autograd records, else a plain call.

    Only `args` and the output are kept for the backward; `fn`'s inner activations are recomputed in the backward
    (the RNG state is replayed, so dropout draws the same mask). The recomputation runs a training BatchNorm a second
    time on the same batch: its running statistics are restored afterwards, so they move once per forward as without
    checkpointing (gradients and statistics tested equal, tests/test_checkpointing.py). `owner`: the module whose
    BatchNorms `fn` runs (default: `fn` itself when it is a module).
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    owner = owner if owner is not None else fn if isinstance(fn, nn.Module) else None
    calls = []

    def run(*xs: torch.Tensor) -> torch.Tensor:
        if not calls:  # the forward
            calls.append(True)
            return fn(*xs)
        with running_stats_kept(owner) if owner is not None else contextlib.nullcontext():  # the recomputation
            return fn(*xs)

    return checkpoint(run, *args, use_reentrant=False)


class MatMul(nn.Module):
    """``a @ b`` as a module, so forward hooks can count its multiply-accumulates."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (queries may be fewer than keys)."""

    def __init__(self, dim: int, heads: int, out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, out_dim or dim)
        self.qk, self.av = MatMul(), MatMul()
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B,n,D] -> [B,h,n,D/h]

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B,q,D], context [B,n,D] (defaults to query), additive mask [q,n] -> [B,q,out_dim]."""
        context = query if context is None else context
        q, k, v = self._split(self.q(query) * self.scale), self._split(self.k(context)), self._split(self.v(context))
        scores = self.qk(q, k.transpose(-2, -1))  # [B,h,q,n]
        if mask is not None:
            scores = scores + mask
        out = self.av(self.drop(scores.softmax(dim=-1)), v)  # [B,h,q,D/h]
        b, h, nq, dh = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, nq, h * dh))  # [B,h,q,D/h] -> [B,q,D]


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask=mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """A stack of pre-LN blocks on ``[B, n, D]`` tokens (batch first)."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x
