"""Model-side config: one dataclass per tower (HSFE, backbone, temporal encoder, text, FSVE) and the loss.

Named architectures (presets: partial `ModelCfg` dicts, defaults fill the rest) are in the registry,
`spklip.config.registry`. Derived sizes (window length 2r+1, sub-block placement) are properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spklip.config.base import ConfigError, check_range


@dataclass(frozen=True)
class HsfeCfg:
    num_subblocks: int | Literal["auto"] = 5  # K overlapping temporal sub-blocks; "auto": as many as step s allows
    radius: int = 30  # r: each sub-block holds 2r+1 consecutive spike planes
    step: int | Literal["auto"] = 45  # s: planes between sub-block starts; "auto": spread K windows evenly over N
    num_branches: int = 4  # M: MTF branches over centred crops of length 2r+1, 2r+1-2c, ...
    channel_step: int = 1  # c: crop shrink per side between consecutive branches
    branch_hidden: int = 16  # hidden channels of each MTF branch's first conv
    features: int = 64  # F: trunk channels (the extractor's output channels)
    num_res_blocks: int = 6  # residual blocks in the trunk (the authors' num_of_layers - 2)
    spatial_attention: bool = True  # SA: per-pixel, per-branch sigmoid gate on the branch maps
    photon_conservation: bool = False  # normalise branch temporal weights to conserve spike counts (see hsfe.py)
    stride: int = 1  # spatial stride of the first branch conv (1 = full resolution, as in the paper)
    norm: Literal["none", "bn"] = "none"  # none: the authors' extractor (no normalisation); bn: BatchNorm after
    # the branch convs, the fuse conv and each trunk conv, the last one of every residual block zero-initialised
    chunk_mb: int | Literal["auto"] = "auto"  # cache budget (MiB) for one call's largest activation: the B*K
    # sub-blocks run in chunks that fit it (speed only, same output); 0: one batch; "auto": the CPU's last-level
    # cache on CPU, one batch on a GPU (see spklip/model/hsfe.py)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"  # of the sub-block maps (speed only,
    # same output to 1e-5): "auto" is channels_last on CPU without autograd (evaluation, encoding: oneDNN's native
    # layout, 1.32-1.44x at the paper's size, docs/benchmarks.md), NCHW in training and on other devices
    fusion: Literal["auto", "none"] = "auto"  # "auto": on CPU without autograd, in channels_last and without BN, each
    # conv and the ReLU / residual add after it run as one oneDNN call (spklip/model/fused.py; speed only, same
    # output); "none": the eager layers everywhere
    checkpointing: bool = False  # activation checkpointing in training: only the sub-block windows, the trunk's
    # input and each residual block's output are kept for the backward, the rest is recomputed (same gradients,
    # ~1/3 more HSFE compute, far less memory: docs/benchmarks.md); the ANN HSFE only (not fsve.variant=full-snn)

    @property
    def window(self) -> int:
        return 2 * self.radius + 1

    def layout(self, num_planes: int) -> tuple[int, int, int]:
        """Sub-block placement on a clip of `num_planes` planes: ``(K, step, offset)``.

        Sub-block i holds planes ``[offset + i*step, offset + i*step + 2r+1)``.
        - K and step given: offset 0 (the authors' placement: starts 0, 45, ..., 180 on 250 planes).
        - ``num_subblocks="auto"``: K = (N - 2r - 1) // step + 1 windows fit, offset 0.
        - ``step="auto"``: step = (N - 2r - 1) // (K - 1) (largest step that fits), and the span of the K windows
          is centred: offset = ((N - 2r - 1) - (K - 1) * step) // 2. K = 1 gives the centred window.
        Both "auto" is an error, as is a layout that does not fit N or a step < 1.
        """
        w, n = self.window, num_planes
        if w > n:
            raise ConfigError(f"model.hsfe: window 2r+1={w} is longer than the clip's {n} planes (model.num_planes)")
        k, s = self.num_subblocks, self.step
        if k == "auto" and s == "auto":
            raise ConfigError("model.hsfe: num_subblocks and step cannot both be 'auto'")
        if k == "auto":
            if s < 1:
                raise ConfigError(f"model.hsfe.step must be >= 1, got {s}")
            return (n - w) // s + 1, s, 0
        if k < 1:
            raise ConfigError(f"model.hsfe.num_subblocks must be >= 1, got {k}")
        if s == "auto":
            if k == 1:
                return 1, 1, (n - w) // 2
            s = (n - w) // (k - 1)
            if s < 1:
                raise ConfigError(f"model.hsfe: {k} sub-blocks of {w} planes need at least {w + k - 1} planes, "
                                  f"got {n}")
            return k, s, ((n - w) - (k - 1) * s) // 2
        if s < 1:
            raise ConfigError(f"model.hsfe.step must be >= 1, got {s}")
        if (k - 1) * s + w > n:
            raise ConfigError(f"model.hsfe: {k} sub-blocks of {w} planes with step {s} need {(k - 1) * s + w} "
                              f"planes, the clip has {n} (model.num_planes)")
        return k, s, 0

    def __post_init__(self):
        check_range("model.hsfe.radius", self.radius, 0)  # r = 0: one-plane windows
        check_range("model.hsfe.num_branches", self.num_branches, 1)
        check_range("model.hsfe.channel_step", self.channel_step, 1)  # 0 would give M copies of the same crop
        check_range("model.hsfe.branch_hidden", self.branch_hidden, 1)
        check_range("model.hsfe.features", self.features, 1)
        check_range("model.hsfe.num_res_blocks", self.num_res_blocks, 0)  # 0: no trunk blocks, fuse conv only
        check_range("model.hsfe.stride", self.stride, 1)
        if self.window - 2 * self.channel_step * (self.num_branches - 1) < 1:
            raise ConfigError(f"model.hsfe: {self.num_branches} branches with channel_step {self.channel_step} "
                              f"do not fit a window of {self.window} planes")
        if self.chunk_mb != "auto" and not (type(self.chunk_mb) is int and self.chunk_mb >= 0):
            raise ConfigError(f"model.hsfe.chunk_mb must be 'auto' or an int >= 0 (0: one batch), "
                              f"got {self.chunk_mb!r}")


@dataclass(frozen=True)
class BackboneCfg:
    layers: tuple[int, ...] = (2, 2, 2, 2)  # bottleneck blocks per stage (paper 2,2,2,2; authors' code 2,2,4,2)
    width: int = 64  # stem width; stage widths are width*(1,2,4,8), x4 bottleneck expansion
    heads: int = 8  # attention-pool heads (paper 8, authors' code 4)
    attn_dropout: float = 0.0  # attention-pool dropout (CLIP 0, authors' code 0.1)
    checkpointing: bool = False  # activation checkpointing in training: the stem and each stage keep only their
    # input and output for the backward (same gradients and BN statistics); the ANN ResNet only (not the FSVE's)

    @property
    def pool_width(self) -> int:
        """Channels the attention pool sees: the last stage's width*2**(stages-1) planes x4 expansion."""
        return self.width * 2 ** (len(self.layers) - 1) * 4 if self.layers else self.width

    def __post_init__(self):
        for i, n in enumerate(self.layers):  # 0 would still build one block (the stage's first)
            check_range(f"model.backbone.layers[{i}]", n, 1)
        check_range("model.backbone.width", self.width, 2)  # the stem's first convs have width // 2 channels
        check_range("model.backbone.heads", self.heads, 1)
        check_range("model.backbone.attn_dropout", self.attn_dropout, 0, 1, high_open=True)


@dataclass(frozen=True)
class TemporalCfg:
    layers: int = 4  # transformer layers over the K sub-block tokens
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    pos_embed: bool = True  # learned positional embedding; false reproduces the authors' order-blind encoder
    # how the K output tokens become one: "mean" (order reaches the pool only through the blocks' nonlinearities:
    # the mean of token + position is order-blind in its linear part), "cls" (a class token), or "concat" (the K
    # tokens side by side through one linear layer, [B, K*D] -> [B, D]: which window saw what is kept linearly)
    pool: Literal["mean", "cls", "concat"] = "mean"
    # "spklip": pre-LN GELU blocks between a LayerNorm on the tokens and a final LayerNorm (CLIP's ViT); "authors":
    # the authors' torch.nn.TransformerEncoder (post-LN, ReLU, no extra norms; spklip/model/temporal.py)
    style: Literal["spklip", "authors"] = "spklip"

    def __post_init__(self):
        check_range("model.temporal.layers", self.layers, 1)
        check_range("model.temporal.heads", self.heads, 1)
        check_range("model.temporal.mlp_ratio", self.mlp_ratio, 0, low_open=True)
        check_range("model.temporal.dropout", self.dropout, 0, 1, high_open=True)


@dataclass(frozen=True)
class TextCfg:
    kind: Literal["minilm", "clip-text", "hf"] = "minilm"  # pretrained MiniLM, CLIP text from scratch, any HF model
    pretrained: str = ""  # kind=hf: local path or hub name given to from_pretrained
    finetune: Literal["frozen", "last-n", "full"] = "frozen"  # which pretrained weights train
    finetune_layers: int = 2  # finetune=last-n: how many final layers train
    context_length: int = 77  # clip-text: tokens incl. start/end
    width: int = 128  # clip-text: transformer width
    layers: int = 4  # clip-text: transformer layers
    heads: int = 4  # clip-text: attention heads
    templates: tuple[str, ...] = ("a spike video of {}.",)  # prompt templates; class embeddings are averaged
    # ("{}": the bare class name, as the authors)
    adapter_dim: int = 0  # clip-text: bottleneck adapter x + fc2(GELU(fc1(x))) of this width after every block
    # (the authors' TextAdapter, width 128 -> 64 -> 128); 0: none
    # the text each training clip is paired with: its dataset "caption" (a sentence, or the class name for folder
    # datasets) or its "class-name" (the string evaluation formats into the templates)
    train_text: Literal["caption", "class-name"] = "caption"
    train_templates: bool = False  # wrap each training text in a template drawn uniformly from `templates`, so
    # that with train_text=class-name every evaluation prompt is a training text (spklip/model/text.py)

    def __post_init__(self):
        check_range("model.text.finetune_layers", self.finetune_layers, 0)
        for key in ("context_length", "width", "layers", "heads"):
            check_range(f"model.text.{key}", getattr(self, key), 1)
        check_range("model.text.adapter_dim", self.adapter_dim, 0)
        if not self.templates:
            raise ConfigError("model.text.templates must hold at least one template ('{}': the bare class name)")
        for i, template in enumerate(self.templates):
            if template.count("{}") != 1:
                raise ConfigError(f"model.text.templates[{i}] must contain '{{}}' (where the class name goes) "
                                  f"exactly once, got {template!r}")
        if self.adapter_dim and self.kind != "clip-text":
            raise ConfigError(f"model.text.adapter_dim applies to kind=clip-text only, got kind={self.kind}")
        if self.kind == "clip-text":
            if self.context_length < 2:
                raise ConfigError(f"model.text.context_length must be >= 2 with kind=clip-text (start and end "
                                  f"tokens), got {self.context_length}")
            if self.width % self.heads:
                raise ConfigError(f"model.text.width must be divisible by model.text.heads={self.heads} with "
                                  f"kind=clip-text, got {self.width}")
        elif self.finetune == "last-n" and self.finetune_layers == 0:  # layers[-0:] would train every layer
            raise ConfigError("model.text.finetune_layers must be >= 1 with finetune=last-n (or use "
                              "finetune=frozen), got 0")


@dataclass(frozen=True)
class FsveCfg:
    variant: Literal["none", "snn-backbone", "full-snn"] = "none"  # ANN, spiking backbone+temporal, or all spiking
    time_steps: int = 4  # T: SNN time steps (input repeated T times)
    neuron: Literal["lif", "plif"] = "lif"  # spikingjelly LIFNode or ParametricLIFNode
    tau: float = 2.0  # membrane time constant (spikingjelly 2.0 needs a float)
    v_threshold: float = 1.0
    surrogate: Literal["atan", "sigmoid", "rect"] = "atan"  # surrogate-gradient function
    reset: Literal["hard", "soft"] = "hard"  # hard: v -> 0; soft: v -> v - threshold
    norm: Literal["bn", "tdbn", "none"] = "tdbn"  # per-step BN, threshold-scaled BN shared over time, or none
    # tdbn's initial gain: "threshold" (V_th, as in the tdBN paper) or "threshold-tau" (V_th * tau: spikingjelly's
    # LIF divides its input by tau, so V_th alone puts pre-activations at half the threshold and ~3 % of neurons fire)
    tdbn_gain: Literal["threshold", "threshold-tau"] = "threshold-tau"
    attn_norm: bool = True  # normalise spiking attention's output before its neuron (else it never reaches threshold)
    surrogate_alpha: float | None = None  # sharpness of the surrogate gradient; None: spikingjelly's default
    # (atan 2, sigmoid 4, rect 1)
    detach_reset: bool = True  # no gradient through the reset (spikingjelly's detach_reset)
    decay_input: bool = True  # LIF v += (x - v) / tau (True) or v = v - v / tau + x (False: input not divided by tau)
    # residual form of the spiking ResNet and HSFE trunk blocks: "current" (conv-BN-LIF body, the residual current
    # summed into the block's output neuron: the original spiking ResNet), "sew" (SEW-ResNet ADD: the output neuron's
    # spikes + the input spikes; block outputs are spike counts), "membrane" (MS-ResNet: LIF-conv-BN body on a
    # real-valued residual stream, every conv still fed by spikes)
    residual: Literal["current", "sew", "membrane"] = "current"
    # what the spiking ResNet's pooled head reads: the last block's output "spikes", or its "current" (that block's
    # output neuron dropped; "sew" and "membrane" blocks have no output neuron, so for them both are the same)
    readout: Literal["spikes", "current"] = "spikes"
    # TET (Deng et al., ICLR 2022): in training the encoder hands the loss one embedding per time step ([T, B, D])
    # and the contrastive loss is averaged over the T steps, instead of one loss on their mean; evaluation always
    # uses the mean over T
    loss_per_step: bool = False

    def __post_init__(self):
        check_range("model.fsve.time_steps", self.time_steps, 1)
        if self.surrogate_alpha is not None:
            check_range("model.fsve.surrogate_alpha", self.surrogate_alpha, 0, low_open=True)
        # spikingjelly's LIFNode and ParametricLIFNode assert tau > 1 (v += (x - v) / tau; PLIF stores
        # -log(tau - 1)), so tau = 1 is as invalid as tau < 1
        check_range("model.fsve.tau", self.tau, 1, low_open=True)
        check_range("model.fsve.v_threshold", self.v_threshold, 0, low_open=True)


@dataclass(frozen=True)
class LossCfg:
    init_logit_scale: float = 1 / 0.07  # exp(learnable log-scale) starts here
    max_logit_scale: float = 100.0  # clamp, as in CLIP
    local_loss: bool = False  # multi-worker: local rows vs all columns instead of the full gathered matrix
    positives: Literal["caption", "label", "pair"] = "caption"  # which (clip, text) pairs of a batch are positives:
    # every pair with the same caption string / class label (multi-positive InfoNCE), or only the diagonal (CLIP).
    # With no repeated caption "caption" equals "pair"; with class captions it stops pushing same-class pairs apart

    def __post_init__(self):
        check_range("loss.max_logit_scale", self.max_logit_scale, 0, low_open=True)
        check_range("loss.init_logit_scale", self.init_logit_scale, 0, self.max_logit_scale, low_open=True)


@dataclass(frozen=True)
class ModelCfg:
    arch: Literal["spklip", "tfp-resnet", "spike-rate-mlp", "tfp-windows", "conv3d"] = "spklip"  # full model or a
    # reviewer baseline (tfp-windows: hsfe's window layout and the temporal encoder, no HSFE; conv3d: 3D convolutions
    # over the raw planes; spklip/model/baselines.py)
    num_planes: int = 250  # N spike planes per clip the model is built for (defaults: the paper, 25 x 10 planes)
    height: int = 240
    width: int = 320
    embed_dim: int = 256  # joint spike-text embedding size
    hsfe: HsfeCfg = field(default_factory=HsfeCfg)
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    temporal: TemporalCfg = field(default_factory=TemporalCfg)
    text: TextCfg = field(default_factory=TextCfg)
    fsve: FsveCfg = field(default_factory=FsveCfg)

    def __post_init__(self):
        if min(self.num_planes, self.height, self.width, self.embed_dim) < 1:
            raise ConfigError("model.num_planes, height, width and embed_dim must be >= 1")
        if self.arch in ("spklip", "tfp-windows"):
            self.hsfe.layout(self.num_planes)  # raises a ConfigError naming the bad key if the sub-blocks don't fit
            if self.embed_dim % self.temporal.heads:  # the temporal blocks (ANN or spiking) split embed_dim
                raise ConfigError(f"model.temporal.heads must divide model.embed_dim={self.embed_dim}, "
                                  f"got {self.temporal.heads}")
            if self.temporal.style != "spklip" and self.fsve.variant != "none":
                raise ConfigError(f"model.temporal.style={self.temporal.style} applies to the ANN temporal encoder "
                                  f"only, got model.fsve.variant={self.fsve.variant}")
        if self.hsfe.checkpointing and (self.arch != "spklip" or self.fsve.variant == "full-snn"):
            raise ConfigError(f"model.hsfe.checkpointing applies to the ANN HSFE only (arch=spklip with fsve.variant "
                              f"none or snn-backbone), got arch={self.arch}, fsve.variant={self.fsve.variant}")
        if self.backbone.checkpointing and (self.arch == "spike-rate-mlp" or
                                            (self.arch == "spklip" and self.fsve.variant != "none")):
            raise ConfigError(f"model.backbone.checkpointing applies to the ANN ResNet only (arch spklip, tfp-resnet, "
                              f"tfp-windows; fsve.variant none), got arch={self.arch}, fsve.variant={self.fsve.variant}")
        if (self.arch in ("tfp-resnet", "tfp-windows") or (self.arch == "spklip" and self.fsve.variant == "none")) \
                and self.backbone.pool_width % self.backbone.heads:  # the ANN backbone's attention pool
            raise ConfigError(f"model.backbone.heads must divide the attention pool's width "
                              f"{self.backbone.pool_width} (model.backbone.width * 2**(stages-1) * 4), "
                              f"got {self.backbone.heads}")

