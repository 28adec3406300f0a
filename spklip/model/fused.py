"""Fused CPU inference for the HSFE: each conv and the elementwise op after it in one oneDNN call.

At the paper's size an eager HSFE pass over one sub-block makes ~30 elementwise passes over 19.7 MB maps (a ReLU
after almost every conv, a residual add per trunk block) and allocates a fresh map for most of them (page faults
when the allocator hands the memory back to the OS between layers). oneDNN's post-ops fold those into the conv
that produces the map: ``conv -> ReLU`` is one call (``attr="relu"``), and a trunk block's last conv adds its
residual and applies the ReLU in the same call (``binary_attr="add"``, ``unary_attr="relu"``). The ops are
PyTorch's own (``torch.ops.mkldnn._convolution_pointwise``, what Inductor emits for the same patterns on CPU); the
results equal the eager layers' (the same oneDNN kernels; tested to 1e-6, and `make bench-model` checks the paper
size to 1e-5).

Used by `HSFE.forward` when `fusable` says so: ``HsfeCfg.fusion="auto"``, a CPU, fp32 without autocast, no
autograd (no post-op has a backward here), channels_last maps (the layout the post-ops run in), no BatchNorm (an
eval-mode BN could be folded into the conv; not done, so ``norm="bn"`` keeps the eager path) and no forward hook
on the layers (the energy accounting counts MACs with hooks; the fused path calls no layer). Everything else runs
`HSFE.extract`, which stays the plain eager reference.
"""

from __future__ import annotations

import torch
from torch import nn

_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() \
    else None


def fusable(hsfe, blocks: torch.Tensor) -> bool:
    """Whether `hsfe` (an `spklip.model.hsfe.HSFE`) runs `blocks` through `extract_fused` (module docstring)."""
    return (_POINTWISE is not None and hsfe.cfg.fusion == "auto" and hsfe.cfg.norm == "none"
            and blocks.device.type == "cpu" and blocks.dtype == torch.float32 and not torch.is_grad_enabled()
            and blocks.is_contiguous(memory_format=torch.channels_last) and blocks.dim() == 4
            and not torch.is_autocast_enabled("cpu")  # autocast runs the eager convs in bf16; the fused ops are fp32
            and not torch.jit.is_tracing() and not _hooked(hsfe))


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would see `module`'s layers (the energy accounting's, a user's feature probe): the
    fused path calls no layer, so it steps aside for them."""
    from torch.nn.modules import module as mod

    if mod._global_forward_hooks or mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _conv(conv: nn.Conv2d, x: torch.Tensor, attr: str = "none", weight: torch.Tensor | None = None) -> torch.Tensor:
    """`conv` on `x` with the unary post-op `attr` ("none", "relu", "sigmoid") fused into the same call."""
    w = conv.weight if weight is None else weight
    return _POINTWISE(x, w, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                      attr, [], "")


def _conv_add_relu(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + residual)`` in one call: a trunk block's last conv, its residual add and ReLU."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "add", 1.0, "relu", [], "")


def extract_fused(hsfe, blocks: torch.Tensor) -> torch.Tensor:
    """`HSFE.extract` with fused post-ops: ``[n, 2r+1, H, W] -> [n, F, H', W']`` (channels_last in and out)."""
    b1 = hsfe.branch1
    h = _conv(b1, blocks, "relu", weight=b1.effective_weight())  # [n, M*hidden, H', W']: the M masked branch convs
    maps = _conv(hsfe.branch2, h)  # [n, M, H', W']: each branch's hidden maps -> one map (grouped conv)
    del h
    if hsfe.gate is not None:  # SA: conv-ReLU-conv-sigmoid, then the gate multiplies the maps
        g1, _, g2, _ = hsfe.gate
        maps = maps.mul_(_conv(g2, _conv(g1, maps, "relu"), "sigmoid"))  # [n, M, H', W']
    tmp = _conv(hsfe.fuse, maps, "relu")  # [n, F, H', W']
    x = tmp
    for block in hsfe.trunk:  # BasicBlock.body: conv-ReLU-conv-ReLU-conv, + x, ReLU
        c1, _, _, c2, _, _, c3, _ = block.body
        x = _conv_add_relu(c3, _conv(c2, _conv(c1, x, "relu"), "relu"), x)  # [n, F, H', W']
    return tmp + tmp if x is tmp else x.add_(tmp)  # the extractor's long skip (x is a new map unless no trunk)

