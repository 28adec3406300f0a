"""`Spklip`: the two-tower spike-video <-> text model (visual tower by ModelCfg.arch / fsve.variant)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spklip.config.model import LossCfg, ModelCfg
from spklip.model.ann_visual import AnnVisualEncoder
from spklip.model.baselines import Conv3dVideo, SpikeRateMLP, TfpResNet, TfpWindows
from spklip.model.fsve import SpikingVisualEncoder
from spklip.model.hsfe import HSFE
from spklip.model.text import build_text_tower, eval_prompts


def build_visual_tower(cfg: ModelCfg) -> nn.Module:
    """The spike encoder named by ``cfg.arch`` (and ``cfg.fsve.variant`` for the spiking ones)."""
    if cfg.arch == "tfp-resnet":
        return TfpResNet(cfg)
    if cfg.arch == "spike-rate-mlp":
        return SpikeRateMLP(cfg)
    if cfg.arch == "tfp-windows":
        return TfpWindows(cfg)
    if cfg.arch == "conv3d":
        return Conv3dVideo(cfg)
    if cfg.fsve.variant != "none":
        return SpikingVisualEncoder(cfg)
    return AnnVisualEncoder(cfg)


class SpikeEncoderView(nn.Module):
    """A view of a whole `Spklip` as a module ``spikes -> encode_spikes(spikes)`` (shares the model's weights, text
    tower included), for ``torch.jit.trace``. Not `spklip.train.export.SpikeEncoder`, the stand-alone visual tower
    + L2 norm that training logs to MLflow."""

    def __init__(self, model: "Spklip"):
        super().__init__()
        self.model = model

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.model.encode_spikes(spikes)


class Spklip(nn.Module):
    """Spike encoder + text encoder + learnable temperature.

    Args:
        cfg: the ModelCfg the model is built from (kept as ``model.cfg``).
        loss_cfg: initial and maximum logit scale (LossCfg defaults: 1/0.07, clamped at 100).
    """

    def __init__(self, cfg: ModelCfg, loss_cfg: LossCfg | None = None):
        super().__init__()
        loss_cfg = loss_cfg or LossCfg()
        self.cfg = cfg
        self.visual = build_visual_tower(cfg)
        self.text = build_text_tower(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(loss_cfg.init_logit_scale)))
        self.max_logit_scale = loss_cfg.max_logit_scale
        self._class_cache: dict[tuple, torch.Tensor] = {}
        self._compiled_visual = None  # `compile_visual`: the training forward's visual tower (not a submodule)

    def check_spikes(self, spikes: torch.Tensor) -> None:
        """Raise ValueError naming the problem if `spikes` is not ``[B, N, H, W]`` of the size the model was built for."""
        want = (self.cfg.num_planes, self.cfg.height, self.cfg.width)
        if spikes.dim() != 4 or tuple(spikes.shape[1:]) != want:
            raise ValueError(f"spikes must be [B, N={want[0]}, H={want[1]}, W={want[2]}] for this model "
                             f"(model.num_planes/height/width), got {list(spikes.shape)}")
        if spikes.dtype not in (torch.uint8, torch.bool) and not spikes.dtype.is_floating_point:
            raise ValueError(f"spikes must be uint8, bool or float, got {spikes.dtype}")

    def encode_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """``[B, N, H, W]`` uint8/bool/float spike planes -> ``[B, D]`` L2-normalised embeddings (in training with
        ``model.fsve.loss_per_step``: ``[T, B, D]``, one per SNN time step)."""
        self.check_spikes(spikes)
        x = spikes.to(self.logit_scale.dtype)
        visual = self._compiled_visual if self._compiled_visual is not None and self.training else self.visual
        return F.normalize(visual(x), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Strings -> ``[B, D]`` L2-normalised embeddings (tokenised inside the text tower)."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("encode_text expects a non-empty list of strings")
        return F.normalize(self.text(list(texts)), dim=-1)

    def spike_encoder(self) -> SpikeEncoderView:
        """A module mapping spikes ``[B, N, H, W]`` -> normalised ``[B, D]``; ``torch.jit.trace`` works on it (the
        forward has no data-dependent Python control flow), e.g. for logging to MLflow."""
        return SpikeEncoderView(self)

    def use_channels_last(self) -> bool:
        """Put the visual tower's conv weights in channels_last and run the HSFE maps in it (so every conv after
        them is NHWC too), whatever ``model.hsfe.memory_format`` says; the outputs are the same to float rounding.
        ANN visual towers only: a spiking tower (``fsve.variant``) is left as it is. Returns whether it applied."""
        if self.cfg.fsve.variant != "none":
            return False
        self.visual.to(memory_format=torch.channels_last)  # 4-d weights NHWC (others unchanged)
        for m in self.visual.modules():
            if isinstance(m, HSFE):
                m.force_channels_last = True
        return True

    def compile_visual(self, **options) -> None:
        """``torch.compile`` the visual tower for the training forward (``self.training``): evaluation, energy
        hooks and export keep the eager module. The compiled wrapper shares the tower's parameters and is kept out
        of the module tree, so ``state_dict`` and checkpoints are unchanged."""
        object.__setattr__(self, "_compiled_visual", torch.compile(self.visual, **options))

    def scale(self) -> torch.Tensor:
        """exp(log-scale) clamped at the maximum (100 by default)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, spikes: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"spike_features": self.encode_spikes(spikes), "text_features": self.encode_text(texts),
                "logit_scale": self.scale()}

    def class_embeddings(self, class_names: list[str], templates: tuple[str, ...] | None = None) -> torch.Tensor:
        """``[C, D]``: each class name in every prompt template, embedded, averaged, re-normalised.

        Cached by (names, templates) while the model is in eval mode; ``model.train()`` clears the cache.
        """
        templates = tuple(templates or self.cfg.text.templates)
        key = (tuple(class_names), templates)
        if not self.training and key in self._class_cache:
            return self._class_cache[key]
        prompts = [p for name in class_names for p in eval_prompts(name, templates)]  # class-major, C*T
        emb = self.encode_text(prompts).view(len(class_names), len(templates), -1)  # [C*T, D] -> [C, T, D]
        emb = F.normalize(emb.mean(dim=1), dim=-1)  # [C, D]
        if not self.training:
            self._class_cache[key] = emb.detach()
            return self._class_cache[key]
        return emb

    def train(self, mode: bool = True):
        self._class_cache.clear()  # weights may change: cached class embeddings are stale
        return super().train(mode)
