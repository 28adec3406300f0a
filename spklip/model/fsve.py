"""FSVE: full-spiking visual encoder on spikingjelly 2.0 (multi-step LIF/PLIF neurons, surrogate gradients).

Layout is time-major ``[T, N, ...]`` (spikingjelly's multi-step convention); stateless layers run once on T*N
folded into the batch through ``layer.SeqToANNContainer``. Two variants (FsveCfg.variant):

- ``snn-backbone``: the ANN HSFE, then its feature maps repeated T times into a spiking ResNet and a spiking
  temporal transformer (the paper's "CNN->SNN" row).
- ``full-snn``: the HSFE is spiking too; the binary camera windows are repeated T times, so every conv in the
  encoder is fed by spikes.

Spiking-specific choices: downsampling by max-pool (keeps spikes binary, where the ANN uses average pooling),
residual blocks in one of three forms (``FsveCfg.residual``; by default the residual sum feeds the block's output
neuron, so block outputs stay binary, and the HSFE's long skip is a spike OR), and attention is Spikformer-style (spiking q/k/v, no softmax). Neuron state is reset at the start of every forward
so nothing leaks from one batch to the next. With ``FsveCfg.loss_per_step`` (TET) a training forward returns
``[T, B, D]``, one embedding per time step, and the loss is averaged over them.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from spklip.config.model import FsveCfg, ModelCfg
from spklip.model.backbone import resnet_output_size
from spklip.model.hsfe import HSFE, BranchConv, cut_subblocks
from spklip.model.layers import MatMul

_SURROGATES = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid, "rect": surrogate.Rect}


def make_neuron(cfg: FsveCfg) -> nn.Module:
    """A multi-step LIF or ParametricLIF neuron configured from FsveCfg."""
    sg = _SURROGATES[cfg.surrogate]() if cfg.surrogate_alpha is None else _SURROGATES[cfg.surrogate](cfg.surrogate_alpha)
    common = dict(v_threshold=cfg.v_threshold, v_reset=0.0 if cfg.reset == "hard" else None, surrogate_function=sg,
                  detach_reset=cfg.detach_reset, decay_input=cfg.decay_input, step_mode="m")
    if cfg.neuron == "plif":
        return neuron.ParametricLIFNode(init_tau=float(cfg.tau), **common)
    return neuron.LIFNode(tau=float(cfg.tau), **common)


class SeqNorm(nn.Module):
    """Batch norm for ``[T, N, C, *spatial]``.

    ``tdbn``: spikingjelly's threshold-dependent BN (one BN shared over time: statistics over T, N and space; weight
    initialised to ``alpha * V_th`` with alpha = tau for ``tdbn_gain="threshold-tau"``, 1 for ``"threshold"``).
    ``bn``: separate statistics and affine parameters per time step. ``none``: identity.
    """

    def __init__(self, channels: int, cfg: FsveCfg, spatial: bool):
        super().__init__()
        self.mode, self.t = cfg.norm, cfg.time_steps
        if self.mode == "tdbn":
            tdbn = layer.ThresholdDependentBatchNorm2d if spatial else layer.ThresholdDependentBatchNorm1d
            alpha = cfg.tau if cfg.tdbn_gain == "threshold-tau" else 1.0
            self.bn = tdbn(alpha=alpha, v_th=cfg.v_threshold, num_features=channels)
        elif self.mode == "bn":
            bn = nn.BatchNorm2d if spatial else nn.BatchNorm1d
            self.bn = bn(channels * cfg.time_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        if self.mode == "tdbn":
            return self.bn(x)  # [T, N, C, *S], BN over T*N folded into the batch (multi-step module)
        t, n, c = x.shape[:3]
        rest = x.shape[3:]
        per_step = x.transpose(0, 1).reshape(n, t * c, *rest)  # [T, N, C, *S] -> [N, T*C, *S]
        if not rest:
            return self.bn(per_step).view(n, t, c).transpose(0, 1)  # [N, T*C] -> [T, N, C]
        return self.bn(per_step).view(n, t, c, *rest).transpose(0, 1)  # [N, T*C, *S] -> [T, N, C, *S]


class ConvNormLIF(nn.Module):
    """conv (run on T*N) -> SeqNorm -> spiking neuron; ``fire=False`` returns the normalised current."""

    def __init__(self, conv: nn.Module, channels: int, cfg: FsveCfg, fire: bool = True):
        super().__init__()
        self.conv, self.norm = layer.SeqToANNContainer(conv), SeqNorm(channels, cfg, spatial=True)
        self.lif = make_neuron(cfg) if fire else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.norm(self.conv(x)))


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


def _pool(stride: int) -> nn.Module:
    return layer.SeqToANNContainer(nn.MaxPool2d(stride)) if stride > 1 else nn.Identity()


def _unit(conv: nn.Module, channels: int, cfg: FsveCfg, fire: bool, pool: nn.Module | None = None) -> list[nn.Module]:
    """One conv of a residual block in the form of ``cfg.residual``: (pool-)conv-BN(-LIF) for "current" and "sew"
    (the last one of a "current" body without its neuron), LIF(-pool)-conv-BN for "membrane" (spikes into every
    conv). A list, flattened into the block's body, so "current" keeps its state-dict keys (body.0 ... body.3)."""
    pooled = [] if pool is None else [pool]
    if cfg.residual == "membrane":
        return [make_neuron(cfg), *pooled, ConvNormLIF(conv, channels, cfg, fire=False)]
    return [*pooled, ConvNormLIF(conv, channels, cfg, fire=fire)]


class SpikingResidual(nn.Module):
    """``body(x) + short(x)`` in one of three forms (``FsveCfg.residual``):

    - ``current``: LIF(body current + shortcut current); block outputs are spikes (the original spiking ResNet).
    - ``sew``: LIF(body current) + shortcut spikes (SEW-ResNet ADD); outputs are spike counts (0, 1, 2, ...).
    - ``membrane``: body(x) + x on a real-valued stream, neurons before the convs (MS-ResNet).

    ``fire=False`` drops the output neuron of "current" (the readout gets the current; the other forms have none).
    """

    def __init__(self, body: list[nn.Module], short: nn.Module, channels: int, cfg: FsveCfg, fire: bool = True):
        super().__init__()
        self.body, self.short = nn.Sequential(*body), short
        self.lif = make_neuron(cfg) if cfg.residual == "current" and fire else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.body(x) + self.short(x))


class SpikingBottleneck(SpikingResidual):
    """Spiking twin of the ANN bottleneck (1x1, 3x3, max-pool when strided, 1x1), residual in ``cfg.residual``'s form."""

    def __init__(self, cin: int, planes: int, stride: int, cfg: FsveCfg, fire: bool = True):
        cout, last_fires = planes * 4, cfg.residual == "sew"
        body = [*_unit(_conv(cin, planes, 1), planes, cfg, True), *_unit(_conv(planes, planes), planes, cfg, True),
                *_unit(_conv(planes, cout, 1), cout, cfg, last_fires, pool=_pool(stride))]
        short = (nn.Sequential(*_unit(_conv(cin, cout, 1), cout, cfg, last_fires, pool=_pool(stride)))
                 if stride > 1 or cin != cout else nn.Identity())
        super().__init__(body, short, cout, cfg, fire)


class SpikingResNet(nn.Module):
    """``[T, N, C, H, W] -> [T, N, D]``: spiking stem and bottleneck stages, global average pool, linear head."""

    def __init__(self, model: ModelCfg, in_ch: int, height: int, width: int):
        super().__init__()
        cfg, wd = model.fsve, model.backbone.width
        resnet_output_size(height, width, len(model.backbone.layers))  # same size check as the ANN backbone
        # "membrane" blocks start with a neuron: the stem hands them its current (max-pooled), the others spikes
        self.stem = nn.Sequential(ConvNormLIF(_conv(in_ch, wd // 2, stride=2), wd // 2, cfg),
                                  ConvNormLIF(_conv(wd // 2, wd // 2), wd // 2, cfg),
                                  ConvNormLIF(_conv(wd // 2, wd), wd, cfg, fire=cfg.residual != "membrane"),
                                  layer.SeqToANNContainer(nn.MaxPool2d(2)))
        blocks, cin = [], wd
        strides = [(i, 2 if i and not j else 1) for i, n in enumerate(model.backbone.layers) for j in range(n)]
        for b, (i, stride) in enumerate(strides):  # readout "current": the last block's output neuron is dropped
            blocks.append(SpikingBottleneck(cin, wd * 2 ** i, stride, cfg,
                                            fire=b < len(strides) - 1 or cfg.readout == "spikes"))
            cin = wd * 2 ** i * 4
        self.stages = nn.Sequential(*blocks)
        self.head = layer.SeqToANNContainer(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, model.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class SpikingSelfAttention(nn.Module):
    """Spikformer-style attention on ``[T, B, K, D]`` spikes: q, k, v are spikes, scores are not softmaxed."""

    def __init__(self, dim: int, heads: int, cfg: FsveCfg):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.ModuleList(layer.SeqToANNContainer(nn.Linear(dim, dim, bias=False)) for _ in range(3))
        self.norms = nn.ModuleList(SeqNorm(dim, cfg, spatial=False) for _ in range(3))
        self.lifs = nn.ModuleList(make_neuron(cfg) for _ in range(4))
        self.qk, self.av = MatMul(), MatMul()
        self.proj = layer.SeqToANNContainer(nn.Linear(dim, dim))
        self.proj_norm = SeqNorm(dim, cfg, spatial=False)
        # q.k of sparse spikes is tiny (~d * rate^2): without a norm the output neuron never fires and attention is dead
        self.attn_norm = SeqNorm(dim, cfg, spatial=False) if cfg.attn_norm else nn.Identity()

    def _heads(self, i: int, x: torch.Tensor) -> torch.Tensor:
        t, b, k, d = x.shape
        y = self.norms[i](self.qkv[i](x).view(t, b * k, d)).view(t, b, k, d)  # SeqNorm over [T, B*K, D]
        return self.lifs[i](y).view(t, b, k, self.heads, d // self.heads).transpose(2, 3)  # -> [T,B,h,K,D/h]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._heads(i, x) for i in range(3))
        out = self.av(self.qk(q, k.transpose(-2, -1)) * self.scale, v)  # [T, B, h, K, D/h]
        t, b, h, n, dh = out.shape
        out = out.transpose(2, 3).reshape(t, b, n, h * dh)  # [T, B, h, K, D/h] -> [T, B, K, D]
        out = self.proj(self.lifs[3](self.attn_norm(out.view(t, b * n, -1)).view(out.shape)))  # SeqNorm over [T, B*K, D]
        return self.proj_norm(out.view(t, b * n, -1)).view(out.shape)


class SpikingBlock(nn.Module):
    """x + SSA(LIF(x)); x + MLP(LIF(x)), MLP = Linear-Norm-LIF-Linear-Norm (real-valued residual stream)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cfg: FsveCfg):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.in_lif, self.mlp_lif, self.hidden_lif = make_neuron(cfg), make_neuron(cfg), make_neuron(cfg)
        self.attn = SpikingSelfAttention(dim, heads, cfg)
        self.fc1 = layer.SeqToANNContainer(nn.Linear(dim, hidden))
        self.fc2 = layer.SeqToANNContainer(nn.Linear(hidden, dim))
        self.norm1, self.norm2 = SeqNorm(hidden, cfg, spatial=False), SeqNorm(dim, cfg, spatial=False)

    def _seq(self, norm: SeqNorm, x: torch.Tensor) -> torch.Tensor:
        t, b, k, d = x.shape
        return norm(x.view(t, b * k, d)).view(x.shape)  # SeqNorm over [T, B*K, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.in_lif(x))
        hidden = self.hidden_lif(self._seq(self.norm1, self.fc1(self.mlp_lif(x))))
        return x + self._seq(self.norm2, self.fc2(hidden))


class SpikingBasicBlock(SpikingResidual):
    """Spiking twin of the HSFE trunk block: 3 convs 3x3, + x, residual in ``cfg.residual``'s form."""

    def __init__(self, ch: int, cfg: FsveCfg):
        body = [*_unit(_conv(ch, ch), ch, cfg, True), *_unit(_conv(ch, ch), ch, cfg, True),
                *_unit(_conv(ch, ch), ch, cfg, cfg.residual == "sew")]
        super().__init__(body, nn.Identity(), ch, cfg)


class SpikingHSFE(HSFE):
    """The HSFE with LIF neurons: ``[T, B*K, 2r+1, H, W]`` spikes -> ``[T, B*K, F, H', W']`` spikes."""

    def __init__(self, model: ModelCfg):
        hs, cfg = model.hsfe, model.fsve
        super().__init__(hs)
        m, f = hs.num_branches, hs.features
        # each ConvNormLIF normalises by model.fsve.norm: the ANN HSFE's BatchNorms of model.hsfe.norm=bn would get
        # no gradient (DDP without find_unused_parameters then fails at the second step), so there are none
        self.norm1, self.norm_fuse = nn.Identity(), nn.Identity()
        self.branch1 = ConvNormLIF(BranchConv(hs), m * hs.branch_hidden, cfg)
        self.branch2 = ConvNormLIF(nn.Conv2d(m * hs.branch_hidden, m, 3, padding=1, groups=m), m, cfg)
        self.gate = (nn.Sequential(ConvNormLIF(_conv(m, 2 * m), 2 * m, cfg), ConvNormLIF(_conv(2 * m, m), m, cfg))
                     if hs.spatial_attention else None)
        self.membrane = cfg.residual == "membrane"
        self.fuse = ConvNormLIF(_conv(m, f), f, cfg, fire=not self.membrane)
        self.trunk = nn.Sequential(*(SpikingBasicBlock(f, cfg) for _ in range(hs.num_res_blocks)))
        self.out_lif = make_neuron(cfg) if self.membrane else nn.Identity()

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        maps = self.branch2(self.branch1(blocks))  # [T, B*K, M, H', W'] spikes
        if self.gate is not None:
            maps = maps * self.gate(maps)  # spike AND spike: the gate stays binary
        tmp = self.fuse(maps)
        if self.membrane:  # real-valued stream: long skip as a sum, one neuron makes the output spikes
            return self.out_lif(self.trunk(tmp) + tmp)
        return torch.maximum(self.trunk(tmp), tmp).clamp(max=1)  # long skip as spike OR (spike counts for "sew")


class SpikingVisualEncoder(nn.Module):
    """FSVE visual tower: ``[B, N, H, W] -> [B, embed_dim]``."""

    def __init__(self, cfg: ModelCfg):
        super().__init__()
        hs, self.t, self.per_step = cfg.hsfe, cfg.fsve.time_steps, cfg.fsve.loss_per_step
        self.window = hs.window
        self.k, self.step, self.offset = hs.layout(cfg.num_planes)
        self.hsfe = SpikingHSFE(cfg) if cfg.fsve.variant == "full-snn" else HSFE(hs)
        fh, fw = -(-cfg.height // hs.stride), -(-cfg.width // hs.stride)  # HSFE output size (ceil division)
        self.backbone = SpikingResNet(cfg, hs.features, fh, fw)
        self.token_norm = SeqNorm(cfg.embed_dim, cfg.fsve, spatial=False)  # tokens at the threshold's scale
        scale = cfg.embed_dim ** -0.5
        self.pos = nn.Parameter(torch.randn(1, 1, self.k, cfg.embed_dim) * scale) if cfg.temporal.pos_embed else None
        self.blocks = nn.ModuleList(SpikingBlock(cfg.embed_dim, cfg.temporal.heads, cfg.temporal.mlp_ratio, cfg.fsve)
                                    for _ in range(cfg.temporal.layers))

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.t, *x.shape)  # [N, ...] -> [T, N, ...] (direct repeat encoding)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self)  # fresh membranes for every batch: no state leaks between calls
        b = spikes.shape[0]
        blocks = cut_subblocks(spikes, self.window, self.k, self.step, self.offset)  # [B*K, 2r+1, H, W]
        if isinstance(self.hsfe, SpikingHSFE):
            maps = self.hsfe(self._repeat(blocks))  # [T, B*K, F, H', W'] spikes
        else:
            maps = self._repeat(self.hsfe(blocks))  # ANN maps [B*K, F, H', W'] -> [T, B*K, F, H', W']
        tokens = self.token_norm(self.backbone(maps))  # [T, B*K, D]
        x = tokens.view(self.t, b, self.k, -1)  # [T, B*K, D] -> [T, B, K, D]
        if self.pos is not None:
            x = x + self.pos
        for block in self.blocks:
            x = block(x)
        steps = x.mean(dim=2)  # mean over the K sub-blocks: [T, B, K, D] -> [T, B, D]
        if self.per_step and self.training:
            return steps  # TET: one embedding per time step, the loss is taken at each (spklip.train.loop)
        return steps.mean(dim=0)  # rate over T -> [B, D]
